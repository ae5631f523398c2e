"""The warm engine: one process runs job after job with models kept loaded; cancel and crashes
end its process group and the next job gets a fresh engine; it never outlives its application."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_background import long_segmentation, process_running

from asdseg.background import FolderJob, JobState, engine_environment
from asdseg.cli import main
from asdseg.engine_server import serve
from asdseg.errors import CancelledError
from asdseg.inference.loaded_networks import inference_network, keep_networks_loaded, loaded_count
from asdseg.networks import build_network
from asdseg.registry import save_model
from asdseg.registry.model_card import ModelCard
from asdseg.warm_engine import WarmEngine

from conftest import tiny_card, wait_until

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)"
)


@pytest.fixture
def engine() -> WarmEngine:
    engine = WarmEngine(environment=engine_environment())
    yield engine
    engine.shutdown()


@pytest.fixture
def kept_networks() -> None:
    keep_networks_loaded(2)
    yield
    keep_networks_loaded(0)


def segment_job(folder: Path, model: ModelCard, name: str) -> list[str]:
    volume = np.random.default_rng(len(name)).normal(size=(24, 20, 18)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(folder / f"{name}.nrrd"))
    arguments = ["segment", "--model", str(model.directory), "--device", "cpu"]
    return [*arguments, "-i", str(folder / f"{name}.nrrd"), "-o", str(folder / f"{name}-label.nrrd")]


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def tiny_model_in(folder: Path, seed: int) -> ModelCard:
    torch.manual_seed(seed)
    network = build_network("vnet", tiny_card()["architecture"]["params"])
    return save_model(network, tiny_card(), folder)


def test_kept_networks_are_reused_bounded_and_reloaded_when_the_weights_change(
    tmp_path: Path, kept_networks: None
) -> None:
    first, second, third = (tiny_model_in(tmp_path / f"model-{seed}", seed) for seed in (1, 2, 3))
    assert inference_network(first) is inference_network(first)
    inference_network(second)
    inference_network(third)  # the least recently used, ``first``, is dropped
    assert loaded_count() == 2
    assert inference_network(first) is not inference_network(second)

    network = inference_network(second)
    retrained = tiny_model_in(tmp_path / "model-2", 4)  # re-released in the same folder
    assert inference_network(retrained) is not network
    new_weights = inference_network(retrained).state_dict()["segmentation_head.weight"]
    assert not torch.equal(new_weights, network.state_dict()["segmentation_head.weight"])


def test_the_server_answers_every_job_and_goes_on_after_bad_ones(
    tiny_model: ModelCard, tmp_path: Path
) -> None:
    good = [*segment_job(tmp_path, tiny_model, "first"), "--progress", "json"]
    jobs = [
        json.dumps({"arguments": good}),
        "not json",
        json.dumps({"arguments": ["segment", "--no-such-option"]}),
        json.dumps({"arguments": [*good[:-3], str(tmp_path / "second-label.nrrd"), *good[-2:]]}),
    ]
    stdout = io.StringIO()
    try:
        serve(io.StringIO("\n".join(jobs) + "\n"), stdout)
    finally:
        keep_networks_loaded(0)
    messages = [json.loads(line) for line in stdout.getvalue().splitlines() if line.startswith("{")]
    finished = [message for message in messages if message["event"] == "finished"]
    assert messages[0] == {"event": "ready"}
    assert [message["exit_code"] for message in finished] == [0, 2, 2, 0]
    assert "one JSON object per line" in finished[1]["stderr"][0]
    assert any("arguments are required: -i/--input" in line for line in finished[2]["stderr"])
    assert any(message["event"] == "progress" for message in messages)
    first, second = labels(tmp_path / "first-label.nrrd"), labels(tmp_path / "second-label.nrrd")
    np.testing.assert_array_equal(first, second)


def test_jobs_run_in_one_process_and_match_a_run_of_their_own(
    engine: WarmEngine, tiny_model: ModelCard, tmp_path: Path
) -> None:
    for name in ("first", "second"):
        job = engine.submit(segment_job(tmp_path, tiny_model, name))
        assert job.wait(300) is JobState.SUCCEEDED, job.error
        assert job.progress.done == job.progress.total > 0
    assert engine.starts == 1 and engine.running

    assert main([*segment_job(tmp_path, tiny_model, "alone")]) == 0
    warm, alone = labels(tmp_path / "second-label.nrrd"), labels(tmp_path / "alone-label.nrrd")
    np.testing.assert_array_equal(warm, alone)

    failing = engine.submit(["segment", "--model", "no-such-model", "-i", "x.nrrd", "-o", "y.nrrd"])
    assert failing.wait(60) is JobState.FAILED and "no-such-model" in failing.error
    assert engine.starts == 1, "a failed command does not cost the engine"


def test_cancel_kills_the_engine_and_the_next_job_starts_a_fresh_one(
    engine: WarmEngine, tiny_model: ModelCard, tmp_path: Path
) -> None:
    folder = tempfile.TemporaryDirectory(dir=tmp_path)
    run = FolderJob(folder, long_segmentation(Path(folder.name), tiny_model), engine=engine)
    assert wait_until(lambda: run.progress.done >= 1 or run.state() is not JobState.RUNNING, 300)
    assert run.state() is JobState.RUNNING, run.job.error
    first_engine = engine.pid

    run.cancel()
    assert run.state() is JobState.CANCELLED
    with pytest.raises(CancelledError):
        run.wait_for_success("cancelled")
    run.close()
    assert wait_until(lambda: not process_running(first_engine), 2.0), "the engine outlived the cancel"
    assert wait_until(lambda: not Path(folder.name).exists(), 5.0)

    job = engine.submit(segment_job(tmp_path, tiny_model, "after"))
    assert job.wait(300) is JobState.SUCCEEDED, job.error
    assert engine.starts == 2 and engine.pid != first_engine


def test_an_engine_that_dies_is_restarted_once_and_reported(
    engine: WarmEngine, tiny_model: ModelCard, tmp_path: Path
) -> None:
    job = engine.submit(long_segmentation(tmp_path, tiny_model))
    assert wait_until(lambda: job.progress.done >= 1, 300), job.error
    os.killpg(engine.pid, signal.SIGKILL)  # as the system's out-of-memory killer would
    assert wait_until(lambda: engine.starts == 2 and job.progress.done >= 1, 300), job.error
    assert job.state() is JobState.RUNNING
    assert "stopped unexpectedly" in job.warnings[0] and "ran the job again" in job.warnings[0]

    os.killpg(engine.pid, signal.SIGKILL)
    assert job.wait(30) is JobState.FAILED
    assert "stopped unexpectedly (exit code -9) twice" in job.error


def test_the_engine_ends_when_its_application_goes(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "asdseg.engine_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=engine_environment(),
    )
    assert json.loads(server.stdout.readline()) == {"event": "ready"}
    server.stdin.close()  # what the application's exit or crash does to the pipe
    assert server.wait(60) == 0

    engine = WarmEngine(environment=engine_environment())
    assert engine.submit(["devices"], progress=False).wait(120) is JobState.SUCCEEDED
    pid = engine.pid
    assert process_running(pid)
    engine.shutdown()
    assert wait_until(lambda: not process_running(pid), 2.0)
