"""The papers' full LA 2018 setting on a lent GPU machine, in one planned run, and GPU inference
figures.

The GPU machine has numpy and torch but no SimpleITK, MONAI or jsonschema (they travel as wheels),
takes at most 64 MiB per call, runs one command for at most 10 minutes, and is given back after
30 s without a call. So the work is split into steps, each one command:

  here (CPU)   pack      the 16 labelled + 44 unlabelled training cases as numpy parts (<= 45 MiB)
  GPU          probe     steps/s of each recipe at the full setting (bf16, channels-last)
  GPU          train     plans steps from the probe to fit the minutes given, starts every recipe
                         at once as a detached process (checkpoints every 500 steps; resumable)
  GPU          wait      follows the runs until they finish or the minutes run out (a call that
                         stays in flight keeps the machine)
  GPU          infer     network and end-to-end time per LA volume, fp32 / bf16 / fp16, and the
                         label maps for the CPU comparison
  GPU          collect   the trained networks as float16 parts of <= 15 MiB, and the logs
  here (CPU)   unpack    rebuilds each run's final checkpoint, so that
                         tools/release_la_model.py and la_reproduction's evaluation take it
  here (CPU)   evaluate  each run on the held-out cases at full resolution -> results JSON + MD

The full setting (UA-MT / SASSNet): 0.625 mm, 112x112x80 patches, 6000 steps, SGD 0.01 decayed
x0.1 every 2500 steps, 4 labelled + 4 unlabelled patches per batch where the recipe uses
unlabelled data. When the minutes do not allow 6000 steps for every recipe, each recipe gets
the same smaller number of steps and the schedule (decay points, warm-ups) is scaled with it.

    python benchmarks/gpu_la.py pack --output .gpu_transfer
    python benchmarks/gpu_la.py probe --cache /tmp/la --output $OUT/probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from la_reproduction import HELD_OUT, recipe_config  # noqa: E402

from asdseg.data_paths import find_la2018, shared_la2018  # noqa: E402
from asdseg.machine import describe_machine  # noqa: E402
from asdseg.training.config import config_from_dict  # noqa: E402

#: In the order they are kept when the time is short.
RECIPES = ("sassnet", "supervised", "dan")
FULL_STEPS = 6000
CHUNK_BYTES = 15 * 2**20
#: Fewer steps than this do not answer the question; recipes are dropped instead.
MIN_STEPS = 1500
#: The networks a release needs from each recipe (the others are trained but not shipped).
SHIPPED_NETWORKS = {"sassnet": ["segmenter"], "supervised": ["segmenter"], "dan": ["segmenter", "confidence"]}


#: ``--smoke``: the same steps on the CPU with tiny patches, to check the script end to end.
SMOKE = {
    "patch_size": [32, 32, 16],
    "batch_size": 4,
    "labelled_per_batch": 2,
    "precision": "fp32",
    "channels_last": False,
}


def full_config(
    recipe: str, steps: int = FULL_STEPS, probe: bool = False, smoke: bool = False
) -> dict[str, Any]:
    """The paper setting for ``recipe`` on the GPU, with its schedule scaled to ``steps``."""
    # The GPU machine reads the cases from the cache; the config records where they came from.
    values = recipe_config(recipe, "paper", find_la2018() or shared_la2018())
    values.update(
        steps=steps,
        lr_decay_every=max(1, round(2500 * steps / FULL_STEPS)),
        checkpoint_every=10**9 if probe else 500,
        validate_every=10**9,
        precision="bf16",
        channels_last=True,
    )
    values["data"]["validation"] = HELD_OUT
    return {**values, **SMOKE} if smoke else values


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_trainer(values: dict[str, Any], cache: Path, output: Path, missing_parts_ok: bool = False):
    from asdseg.training.case_cache import load_cached_split
    from asdseg.training.trainer import Trainer

    config = config_from_dict(values)
    return Trainer(config, output, device="auto", split=load_cached_split(cache, missing_parts_ok))


# GPU steps ------------------------------------------------------------------------------------


def probe(args: argparse.Namespace) -> None:
    """Steps per second of each recipe alone, after a warm-up, for a few layouts."""
    torch.backends.cudnn.benchmark = True
    results = {"machine": describe_machine(), "recipes": {}}
    variants = {
        "bf16+channels_last": {},
        "bf16": {"channels_last": False},
        "fp32": {"precision": "fp32", "channels_last": False},
    }
    if args.smoke:
        variants = {"bf16+channels_last": {}}
    for recipe in args.recipes:
        for variant, change in variants.items():
            if recipe != args.recipes[0] and variant != "bf16+channels_last":
                continue
            folder = Path(args.scratch) / f"probe-{recipe}-{variant}"
            shutil.rmtree(folder, ignore_errors=True)
            values = {**full_config(recipe, probe=True, smoke=args.smoke), **change}
            # the probe may run before every part has arrived: the first holds every labelled case
            trainer = make_trainer(values, Path(args.cache), folder, missing_parts_ok=True)
            for _ in range(args.warmup):
                trainer.train_step()
            synchronize()
            started = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            synchronize()
            rate = args.steps / (time.perf_counter() - started)
            memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            results["recipes"].setdefault(recipe, {})[variant] = {"steps_per_s": rate, "peak_gib": memory}
            print(f"{recipe:12s} {variant:20s} {rate:6.2f} steps/s  peak {memory:5.1f} GiB", flush=True)
            del trainer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")


def plan_steps(rates: dict[str, float], seconds: float) -> dict[str, int]:
    """The same number of steps for every recipe, as many as fit ``seconds`` when the recipes
    share the GPU (their step times add up), at most the full 6000; the last recipes are dropped
    while fewer than MIN_STEPS would fit."""
    recipes = [recipe for recipe in RECIPES if recipe in rates]
    while recipes:
        steps = min(FULL_STEPS, int(seconds / sum(1 / rates[recipe] for recipe in recipes)))
        if steps >= MIN_STEPS or len(recipes) == 1:
            return {recipe: steps for recipe in recipes}
        recipes.pop()
    return {}


def train(args: argparse.Namespace) -> None:
    """Plan from the probe and start each recipe as a detached process."""
    probed = json.loads(Path(args.probe).read_text())["recipes"]
    rates = {recipe: entry["bf16+channels_last"]["steps_per_s"] for recipe, entry in probed.items()}
    # Running side by side overlaps one run's CPU work with another's GPU work: the sum of the
    # step times is an upper bound; ``overlap_gain`` is the fraction of it expected back.
    plan = plan_steps(rates, args.minutes * 60 * (1 + args.overlap_gain))
    if args.steps:
        plan = {recipe: args.steps for recipe in RECIPES if recipe in rates}
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.minutes * 60
    (runs / "plan.json").write_text(
        json.dumps({"rates": rates, "minutes": args.minutes, "steps": plan}, indent=1)
    )
    for recipe, steps in plan.items():
        folder = runs / recipe
        folder.mkdir(exist_ok=True)
        command = [
            sys.executable,
            __file__,
            "train-one",
            "--recipe",
            recipe,
            "--steps",
            str(steps),
            "--cache",
            args.cache,
            "--runs",
            str(runs),
            "--deadline",
            str(deadline),
        ]
        command += ["--smoke"] if args.smoke else []
        with open(folder / "stdout.log", "ab") as log:
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        print(f"started {recipe}: {steps} steps", flush=True)


def train_one(args: argparse.Namespace) -> None:
    """One recipe's run. After ``--replan-at`` steps it measures its own rate beside the other
    runs and, if the planned steps would not end before ``--deadline``, shortens the schedule to
    what fits (before the first learning-rate decay, so the run is as if planned so from the
    start); a run resumed from a checkpoint keeps its schedule."""
    torch.backends.cudnn.benchmark = True
    folder = Path(args.runs) / args.recipe
    trainer = make_trainer(full_config(args.recipe, args.steps, smoke=args.smoke), Path(args.cache), folder)
    if (folder / "checkpoint.pt").exists():
        trainer.resume()
    started, first_step = time.monotonic(), trainer.step

    def report(row: dict[str, float]) -> None:
        if row["step"] % 50 == 0 or row["step"] == trainer.config.steps:
            elapsed = time.monotonic() - started
            rate = (row["step"] - first_step) / elapsed
            progress = {
                "step": row["step"],
                "of": trainer.config.steps,
                "loss": row["loss"],
                "steps_per_s": rate,
                "elapsed_s": elapsed,
            }
            (folder / "progress.json").write_text(json.dumps(progress))
            print(json.dumps(progress), flush=True)

    if first_step == 0 and args.deadline and args.replan_at < args.steps:
        trainer.run(until=args.replan_at, show_progress=False, on_step=report)
        rate = args.replan_at / (time.monotonic() - started)
        fits = int(args.replan_at + rate * (args.deadline - time.time()) * 0.95)
        if fits < args.steps:
            values = full_config(args.recipe, max(fits, args.replan_at + 1), smoke=args.smoke)
            # in place: the recipe holds the same config (SASSNet's warm-up spans its steps)
            trainer.config.steps, trainer.config.lr_decay_every = values["steps"], values["lr_decay_every"]
            print(f"replanned: {trainer.config.steps} steps at {rate:.2f} steps/s", flush=True)
    trainer.run(show_progress=False, on_step=report)
    (folder / "done").write_text("finished\n")


def status_lines(runs: Path) -> list[str]:
    lines = []
    for folder in sorted(path for path in runs.iterdir() if path.is_dir()):
        progress = folder / "progress.json"
        state = "done" if (folder / "done").exists() else "running"
        text = progress.read_text() if progress.exists() else "{}"
        lines.append(f"{folder.name}: {state} {text}")
    return lines


def wait(args: argparse.Namespace) -> None:
    """Print the runs' progress every ``--every`` seconds until all are done or time is up."""
    runs, deadline = Path(args.runs), time.monotonic() + args.seconds
    while True:
        lines = status_lines(runs)
        print(time.strftime("%H:%M:%S"), *lines, sep="\n  ", flush=True)
        if all(": done" in line for line in lines) or time.monotonic() > deadline:
            return
        time.sleep(args.every)


def infer(args: argparse.Namespace) -> None:
    """Network time per volume at each precision, the end-to-end segment time, and label maps."""
    import numpy as np
    import SimpleITK as sitk

    from asdseg.inference.segment import SegmentationOptions, segment_image
    from asdseg.registry import find_model, load_network

    torch.backends.cudnn.benchmark = True
    image = sitk.ReadImage(args.image)
    card = find_model(args.model)
    network = load_network(card)
    output = Path(args.output)
    figures: dict[str, Any] = {
        "machine": describe_machine(),
        "model": card.name,
        "volume": list(image.GetSize()),
    }
    for device in args.devices:
        for precision in ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32",):
            options = SegmentationOptions(device=device, precision=precision)
            segment_image(image, card, network, options)  # warm-up: kernels, allocator, cuDNN choice
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = segment_image(image, card, network, options)
                times.append(time.perf_counter() - started)
            network_time = _network_seconds(network, card, image, device, precision, args.repeats)
            key = f"{device}-{precision}"
            figures[key] = {"end_to_end_s": float(np.median(times)), "network_s": network_time}
            sitk.WriteImage(result.label_map, str(output / f"label-{key}.nii.gz"))
            print(key, figures[key], flush=True)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "asdseg",
            "segment",
            "-i",
            args.image,
            "-o",
            str(output / "cli.nii.gz"),
            "--model",
            card.name,
            "--device",
            args.devices[0],
        ],
        check=True,
    )
    figures[f"cli_wall_s_{args.devices[0]}_fp32"] = time.perf_counter() - started
    (output / "inference_gpu.json").write_text(json.dumps(figures, indent=1) + "\n")


def _network_seconds(network, card, image, device: str, precision: str, repeats: int) -> float:
    """Median time of the sliding-window network pass alone on the model-grid volume."""
    import numpy as np

    from asdseg.inference.segment import _model_grid_input
    from asdseg.inference.sliding_window import card_window_settings, predict_volume

    _, _, array = _model_grid_input(image, card)
    settings = card_window_settings(card, precision=precision)
    target = torch.device(device)
    times = []
    for _ in range(repeats):
        if target.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        predict_volume(network, array, settings, target)
        if target.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def collect(args: argparse.Namespace) -> None:
    """Each finished run's shipped networks as float16 chunks, with its config and log."""
    runs, output = Path(args.runs), Path(args.output)
    manifest: dict[str, Any] = {}
    for recipe in args.recipes:
        folder = runs / recipe
        if not (folder / "done").exists():
            print(f"{recipe}: not finished, skipped", flush=True)
            continue
        state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
        networks = {
            name: {
                key: value.half() if value.is_floating_point() else value for key, value in weights.items()
            }
            for name, weights in state["recipe"]["networks"].items()
            if name in SHIPPED_NETWORKS[recipe]
        }
        blob_path = Path(args.scratch) / f"{recipe}.networks.pt"
        torch.save(
            {
                "config": state["config"],
                "step": state["step"],
                "history": state["history"],
                "networks": networks,
            },
            blob_path,
        )
        blob = blob_path.read_bytes()
        chunks = math.ceil(len(blob) / CHUNK_BYTES)
        for index in range(chunks):
            (output / f"{recipe}.part{index}").write_bytes(
                blob[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
            )
        manifest[recipe] = {"chunks": chunks, "bytes": len(blob)}
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest), flush=True)


# CPU steps ------------------------------------------------------------------------------------


def pack(args: argparse.Namespace) -> None:
    from asdseg.data_paths import require_la2018
    from asdseg.training.case_cache import write_case_cache

    root = require_la2018()
    data = config_from_dict(full_config("supervised")).data
    data.root = str(root)
    for path in write_case_cache(data, args.output, args.part_mib * 2**20):
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


def unpack(args: argparse.Namespace) -> None:
    """Rebuild ``RUNS/<recipe>/checkpoint.pt`` from the collected chunks: the trained networks,
    and the recipe's other networks (discriminators) and optimisers freshly made, which a release
    does not use."""
    import io

    from asdseg.training.checkpoint import save_checkpoint
    from asdseg.training.recipes import RECIPE_CLASSES

    transfer, runs = Path(args.transfer), Path(args.runs)
    manifest = json.loads((transfer / "manifest.json").read_text())
    for recipe, entry in manifest.items():
        blob = b"".join((transfer / f"{recipe}.part{index}").read_bytes() for index in range(entry["chunks"]))
        collected = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        config = config_from_dict(collected["config"])
        recipe_object = RECIPE_CLASSES[config.recipe](config, torch.device("cpu"))
        for name, weights in collected["networks"].items():
            recipe_object.networks[name].load_state_dict(
                {key: value.float() if value.is_floating_point() else value for key, value in weights.items()}
            )
        folder = runs / recipe
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            folder / "checkpoint.pt",
            {
                "config": collected["config"],
                "step": collected["step"],
                "recipe": recipe_object.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": None,
                "history": collected["history"],
            },
        )
        print(f"{recipe}: step {collected['step']} of {config.steps} -> {folder / 'checkpoint.pt'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("pack")
    command.add_argument("--output", default=".gpu_transfer")
    command.add_argument("--part-mib", type=int, default=45)
    command = commands.add_parser("probe")
    command.add_argument("--cache", required=True)
    command.add_argument("--output", required=True)
    command.add_argument("--scratch", default="/tmp/gpu-probe")
    command.add_argument("--recipes", nargs="+", default=list(RECIPES))
    command.add_argument("--warmup", type=int, default=5)
    command.add_argument("--steps", type=int, default=20)
    command.add_argument("--smoke", action="store_true")
    command = commands.add_parser("train")
    command.add_argument("--smoke", action="store_true")
    command.add_argument("--probe", required=True)
    command.add_argument("--cache", required=True)
    command.add_argument("--runs", required=True)
    command.add_argument("--minutes", type=float, required=True)
    command.add_argument("--overlap-gain", type=float, default=0.0)
    command.add_argument("--steps", type=int, help="this many steps for every recipe instead of the plan")
    command = commands.add_parser("train-one")
    command.add_argument("--smoke", action="store_true")
    command.add_argument("--recipe", required=True)
    command.add_argument("--steps", type=int, required=True)
    command.add_argument("--cache", required=True)
    command.add_argument("--runs", required=True)
    command.add_argument("--deadline", type=float, help="unix time by which the run must have ended")
    command.add_argument("--replan-at", type=int, default=200)
    command = commands.add_parser("wait")
    command.add_argument("--runs", required=True)
    command.add_argument("--seconds", type=float, required=True)
    command.add_argument("--every", type=float, default=60)
    command = commands.add_parser("infer")
    command.add_argument("--model", required=True)
    command.add_argument("--image", required=True)
    command.add_argument("--output", required=True)
    command.add_argument("--repeats", type=int, default=3)
    command.add_argument("--devices", nargs="+", default=["cuda"])
    command = commands.add_parser("collect")
    command.add_argument("--runs", required=True)
    command.add_argument("--output", required=True)
    command.add_argument("--scratch", default="/tmp")
    command.add_argument("--recipes", nargs="+", default=list(RECIPES))
    command = commands.add_parser("unpack")
    command.add_argument("--transfer", required=True)
    command.add_argument("--runs", default="benchmark_results/la_gpu")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {
        "pack": pack,
        "probe": probe,
        "train": train,
        "train-one": train_one,
        "wait": wait,
        "infer": infer,
        "collect": collect,
        "unpack": unpack,
    }[args.command](args)


if __name__ == "__main__":
    main()
