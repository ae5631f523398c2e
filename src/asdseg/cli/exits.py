"""How a command ends: its exit status, one line for each failure the user can act on, and the one
SIGTERM handling (a signal turned into an exception, so that every ``finally`` runs)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from asdseg.errors import AsdsegError

#: Exit status of a failure the user can act on (argparse's own for a bad option).
EXIT_ERROR = 2
#: Exit status of a run stopped by Ctrl-C (128 + SIGINT) or SIGTERM (128 + SIGTERM).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
#: Exit status of a fine-tuning run stopped by SIGTERM (the parent's Cancel).
EXIT_STOPPED = 3
#: Exit status of a fine-tuning run whose model did worse on the held-out slices.
EXIT_WORSE = 4


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporary files) runs."""


def _raise_terminated() -> None:
    raise Terminated


@contextmanager
def on_sigterm(stop: Callable[[], None]) -> Iterator[None]:
    """For the block's duration, SIGTERM calls ``stop``, which raises: a stopped run then removes
    its temporary files like Ctrl-C does (Python's default would exit on the spot). Outside the
    main thread, where no handler can be set, signals are left alone."""

    def handle(signal_number: int, frame: object) -> None:
        stop()

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_message(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return (
        f"{where}{error.strerror or error}. The file being written was left as it was; free space, "
        "fix the permissions or choose another path, then run again."
    )


def is_out_of_memory(error: RuntimeError) -> bool:
    """torch's out-of-memory errors (CUDA's ``torch.OutOfMemoryError``, MPS's and the CPU
    allocator's plain RuntimeError), told apart without importing torch here."""
    text = str(error).lower()
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate" in text


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``handler(args)`` with SIGTERM raising :class:`Terminated`; failures the user can act on
    print one line and give :data:`EXIT_ERROR`, Ctrl-C and SIGTERM 130 and 143."""
    try:
        with on_sigterm(_raise_terminated):
            return handler(args)
    except AsdsegError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print(
            "error: out of memory. Use a smaller --batch-size, a smaller volume, or a machine with more "
            "memory.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        print(
            f"error: out of memory ({first_line}). Use a smaller batch (--batch-size where the "
            "command has it, batch_size in a training config) or a region of interest (--roi), "
            "or another device (--device cpu, or close the programs that use the GPU), then run "
            "again.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Terminated:
        print("stopped (SIGTERM); files being written were left as they were.", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted; files being written were left as they were.", file=sys.stderr)
        return EXIT_INTERRUPTED
