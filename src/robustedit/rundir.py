"""What a run directory guarantees: one writer at a time, resumes only of the same run, and an
output folder that is known to be writable before any model loads.

- ``writer_lock(folder)``: an exclusive ``flock`` on ``folder/.lock`` held while a run writes.
  The kernel drops it when the process ends, however it ends (kill -9 included), so a lock is never
  stale; a second writer gets one line naming the process that holds it.
- ``check_same_run(folder, settings)``: ``run.json`` records what produced the folder's records
  (editor, model and its weights fingerprint, dataset, configuration, seed); a resume with other
  settings is refused with the differences, since its records would mix two configurations.
- ``check_output_folder(path)``: the folder exists or can be created, is not a file, and can be
  written to.
- ``on_interrupt(hint)``: what a Ctrl-C inside the block leaves behind and how to go on, for the
  one line the command prints before it exits with status 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from robustedit.errors import UserError
from robustedit.output import atomic_write

LOCK, MANIFEST = ".lock", "run.json"
_interrupted: list[str] = []  # the hint of the innermost block a KeyboardInterrupt left

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's writer lock for the duration of the block, or refuse in one line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{folder} is being written by process {holder}; wait for it to finish "
                            "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def differences(recorded: dict, now: dict) -> list[str]:
    """'key: recorded → now' for every setting that differs (nested keys dotted)."""
    a, b = _flatten(json.loads(json.dumps(recorded))), _flatten(json.loads(json.dumps(now)))
    return [f"{k}: {a.get(k, '(unset)')!r} → {b.get(k, '(unset)')!r}"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def run_differences(folder: Path, settings: dict) -> list[str] | None:
    """How ``settings`` differ from those ``folder``'s records were made with (None: none recorded).
    Settings recorded as None (e.g. a fingerprint the caller could not know) are not compared."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    both = {k for k in recorded.keys() & settings.keys() if recorded[k] is not None and settings[k] is not None}
    return differences({k: recorded[k] for k in both}, {k: settings[k] for k in both})


def check_same_run(folder: Path, settings: dict, *, resume: bool) -> None:
    """Record ``settings`` for a new run; on a resume, refuse settings other than the recorded ones."""
    path = Path(folder) / MANIFEST
    if resume and path.is_file():
        diff = run_differences(folder, settings)
        if diff:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise UserError(f"--resume of {folder} with other settings than its records were made with ({shown}); "
                            "rerun with the recorded settings or choose another --out")
        return
    atomic_write(path, json.dumps(settings, indent=2, default=str) + "\n")


def check_output_folder(path: Path, what: str = "--out") -> None:
    """Refuse, before any work, a folder that is a file or that cannot be created or written: a
    probe file is created (and removed) in the folder or its nearest existing parent."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == path else f" (in {existing})"
        raise UserError(f"{what} {path} cannot be written{where}: {e.strerror or e}") from None
    if (path / LOCK).exists():  # a run writing there now: say so before the model loads
        with writer_lock(path):
            pass


@contextlib.contextmanager
def on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """If a KeyboardInterrupt leaves the block, remember ``hint()`` (e.g. "12 records kept in …;
    continue with --resume") for ``interrupt_message``."""
    try:
        yield
    except KeyboardInterrupt:
        if not _interrupted:
            try:
                _interrupted.append(hint())
            except Exception:  # a hint must never hide the interrupt
                pass
        raise


def interrupt_message() -> str:
    """The line a command prints when interrupted."""
    return "interrupted" + (f": {_interrupted[0]}" if _interrupted else "; nothing was written")
