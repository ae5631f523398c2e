"""Writing files so that nothing is ever half-written, and files that belong together (a label
map, its sidecars, its SDM; an imported dataset's cases) change together, even under kill -9.

Each target is written to a hidden temporary beside it. When every temporary is whole and
there are several targets, a journal listing the renames still to do is written (each copy by
one atomic rename) into each target's folder; it is committed once its copy is in every one of
them. Then the temporaries are renamed onto their targets and the journal removed. A process
killed before the journal is committed leaves every target as it was; one killed after it
leaves a journal that :func:`recover_folder` rolls forward, from whichever folder it is run
on first, so the targets end all new. Any
later atomic write into the folder, and any read of an image there, recovers it first, so no
reader sees a mix. Hidden temporaries carry their writer's process id: those of a writer that
is gone are removed by the same recovery.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

JOURNAL_PREFIX = ".asdseg-journal-"
#: A hidden temporary, backup or journal: ``.<name>.<pid>-<8 hex>.<tag><suffix>``.
HIDDEN_FILE = re.compile(r"^\..*\.(?P<pid>\d+)-[0-9a-f]{8}\.(tmp|old)")
JOURNAL_FILE = re.compile(rf"^{re.escape(JOURNAL_PREFIX)}(?P<pid>\d+)-[0-9a-f]{{8}}\.json$")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (a writer that may still finish its renames)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would send Ctrl-C there
        import ctypes

        synchronize, wait_timeout = 0x00100000, 0x00000102
        handle = ctypes.windll.kernel32.OpenProcess(synchronize, False, pid)
        if not handle:
            return False
        try:
            return ctypes.windll.kernel32.WaitForSingleObject(handle, 0) == wait_timeout
        finally:
            ctypes.windll.kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def kept_suffix(path: Path) -> str:
    """The suffix a temporary must keep for SimpleITK to pick the format (``.nii.gz`` whole)."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


def hidden_name(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{tag}{kept_suffix(path)}")


def create_temporary(path: Path, tag: str = "tmp") -> Path:
    """A new empty file beside ``path``, hidden, keeping its suffix. Created with mode 0666 less
    the umask, as the final file should be: ``mkstemp``'s 0600 would survive the rename and hide
    every output from the user's group."""
    while True:
        temporary = hidden_name(path, tag)
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue


def backup(target: Path) -> Path | None:
    """A hidden copy of an existing ``target`` (a hard link where the file system allows), so
    that a rename over it can be undone; None when there is nothing to keep."""
    if not target.exists():
        return None
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(target))
    copy = hidden_name(target, "old")
    try:
        os.link(target, copy)
    except OSError:
        shutil.copy2(target, copy)
    return copy


def write_journal(renames: Sequence[tuple[Path, Path]]) -> list[Path]:
    """The renames still to do, written whole into each target's folder; the journals' paths."""
    folders = list(dict.fromkeys(target.parent for _, target in renames))
    journals = [folder / f"{JOURNAL_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.json" for folder in folders]
    text = json.dumps(
        {
            "renames": [[str(temporary.resolve()), str(target.resolve())] for temporary, target in renames],
            "journals": [str(journal.resolve()) for journal in journals],
        }
    )
    for journal in journals:
        partial = create_temporary(journal)
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, journal)
    return journals


def roll_forward(journal: Path) -> None:
    """Finish the renames ``journal`` lists, when it was committed (its copy is in every target's
    folder), and remove it and its copies. An uncommitted journal's renames never started: the
    targets are as they were and its temporaries are leftovers."""
    try:
        entries = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # written by one rename, so never partial: gone meanwhile
        return
    copies = [Path(copy) for copy in entries["journals"]]
    if all(copy.exists() for copy in copies):
        for temporary, target in entries["renames"]:
            with contextlib.suppress(FileNotFoundError):
                os.replace(temporary, target)
    for copy in copies:
        copy.unlink(missing_ok=True)


def recover_folder(folder: Path) -> None:
    """Complete the writes a killed process left in ``folder`` and remove its hidden leftovers.
    Writers still running are left alone. Best effort: in a folder this process may not change,
    a reader still reads and a writer fails on its own write, naming the file."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    with contextlib.suppress(OSError):
        for name in names:
            match = JOURNAL_FILE.match(name)
            if match and not process_alive(int(match["pid"])):
                roll_forward(folder / name)
        for name in names:
            match = HIDDEN_FILE.match(name)
            if match and not process_alive(int(match["pid"])):
                (folder / name).unlink(missing_ok=True)


def replace_all(temporaries: Sequence[Path], targets: Sequence[Path]) -> None:
    """Rename every temporary onto its target, under a journal when there are several (one
    rename needs none: it is atomic); if a rename fails, put back what the earlier ones replaced
    (or remove what they created) before raising."""
    copies: list[Path | None] = []
    journals: list[Path] = []
    done: list[int] = []
    try:
        for target in targets:
            copies.append(backup(target))
        if len(targets) > 1:
            journals = write_journal(list(zip(temporaries, targets)))
        for index, (temporary, target) in enumerate(zip(temporaries, targets)):
            os.replace(temporary, target)
            done.append(index)
    except BaseException:
        for index in reversed(done):
            with contextlib.suppress(OSError):
                if copies[index] is not None:
                    os.replace(copies[index], targets[index])
                else:
                    targets[index].unlink(missing_ok=True)
        raise
    finally:
        for journal in journals:
            journal.unlink(missing_ok=True)
        for copy in copies:
            if copy is not None:
                copy.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of ``paths``; when the block succeeds they replace
    their targets together, all or none.

    A failure while writing removes the temporaries and leaves every target as it was; a failure
    while renaming (a target that is a directory, an immutable file) undoes the renames already
    made; a kill leaves a journal the next write or read in the folder completes.
    """
    targets = [Path(path) for path in paths]
    temporaries: list[Path] = []
    try:
        for folder in dict.fromkeys(target.parent for target in targets):
            folder.mkdir(parents=True, exist_ok=True)
            recover_folder(folder)
        for target in targets:
            temporaries.append(create_temporary(target))
        yield temporaries
        replace_all(temporaries, targets)
    except OSError as error:
        # Name the file the user asked for, not its hidden temporary; a failed write() (a full
        # disk, a file-size limit) names no file at all.
        if error.filename is not None and Path(error.filename) in temporaries:
            error.filename = str(targets[temporaries.index(Path(error.filename))])
        elif error.filename is None:
            error.filename = ", ".join(str(target) for target in targets)
        raise
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.
    On failure the temporary file is removed and whatever was at ``path`` is left untouched."""
    with atomic_paths([path]) as (temporary,):
        yield temporary


@contextlib.contextmanager
def write_errors_named(target: str | Path) -> Iterator[None]:
    """A failed write (a full disk, a quota, a file-size limit) that the writer reports as
    RuntimeError, as ITK and ``torch.save`` do, becomes an :class:`OSError` naming ``target``."""
    try:
        yield
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise OSError(errno.EIO, f"could not be written ({reason})", str(target)) from error
