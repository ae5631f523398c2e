"""The warm engine: one process that runs ``asdseg`` commands one after another, so that torch,
MONAI and the recently used models are loaded once per Slicer session rather than once per click.

It talks over its standard input and output, one JSON object per line (no network port):

- in: ``{"arguments": ["segment", "-i", "in.nrrd", "-o", "out.nrrd", "--progress", "json"]}``,
  the command line of ``asdseg``;
- out: ``{"event": "ready"}`` once imports are done; then per job the command's own lines
  (progress events, ``wrote ...``) and last ``{"event": "finished", "exit_code": N, "stderr":
  [...]}`` with what the command wrote on stderr (its ``error:`` and ``warning:`` lines).

The engine ends when its standard input closes: when the application that started it exits,
crashes or lets it go (:class:`asdseg.warm_engine.WarmEngine`). A running job is not cancelled
from inside: the client kills the engine's process group and starts a fresh engine for the next
job, exactly as a one-process-per-job run is cancelled.

    python -m asdseg.engine_server [--keep-models N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import traceback
from collections.abc import Sequence
from typing import IO, Any

#: Models kept loaded between jobs by default: the one in use and one more (two shipped
#: left-atrium networks take about 0.3 GB of memory).
DEFAULT_KEPT_MODELS = 2


def job_arguments(line: str) -> list[str]:
    """The command line of a job ``line``; ValueError saying what is wrong with a malformed one."""
    try:
        job = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"a job must be one JSON object per line: {error}") from error
    arguments = job.get("arguments") if isinstance(job, dict) else None
    if not isinstance(arguments, list) or not all(isinstance(item, str) for item in arguments):
        raise ValueError('a job must be {"arguments": ["command", "option", ...]}, a list of strings')
    return arguments


def run_job(arguments: Sequence[str]) -> tuple[int, list[str]]:
    """Run one ``asdseg`` command in this process; its exit code and its stderr lines. An
    exception the command does not handle becomes exit code 1 with its traceback, and the
    engine goes on with the next job."""
    from asdseg.cli import main

    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        try:
            exit_code = main(list(arguments))
        except SystemExit as stop:  # argparse's usage errors
            exit_code = stop.code if isinstance(stop.code, int) else 1
        except Exception:
            traceback.print_exc()
            exit_code = 1
    return exit_code, captured.getvalue().splitlines()


def send(message: dict[str, Any], stdout: IO[str]) -> None:
    stdout.write(json.dumps(message) + "\n")
    stdout.flush()


def serve(stdin: IO[str], stdout: IO[str], kept_models: int = DEFAULT_KEPT_MODELS) -> None:
    """Answer jobs from ``stdin`` until it closes."""
    import asdseg.cli  # noqa: F401  (torch and the engine imported before "ready", not per job)
    from asdseg.inference.loaded_networks import keep_networks_loaded

    keep_networks_loaded(kept_models)
    send({"event": "ready"}, stdout)
    for line in stdin:
        if not line.strip():
            continue
        try:
            with contextlib.redirect_stdout(stdout):
                exit_code, stderr = run_job(job_arguments(line))
        except ValueError as error:
            exit_code, stderr = 2, [f"error: {error}"]
        send({"event": "finished", "exit_code": exit_code, "stderr": stderr}, stdout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asdseg.engine_server", description=__doc__)
    parser.add_argument(
        "--keep-models",
        type=int,
        default=DEFAULT_KEPT_MODELS,
        help="models kept loaded between jobs, least recently used dropped first (0: none)",
    )
    args = parser.parse_args(argv)
    if args.keep_models < 0:
        parser.error("--keep-models must be 0 or more")
    serve(sys.stdin, sys.stdout, args.keep_models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
