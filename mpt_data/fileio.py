"""Local-file primitives every writer in both packages uses: atomic writes and an exclusive folder lock.

Imports nothing heavy (numpy only where asked), so `mpt_train` uses it on nodes without dask or smplx.

Atomic write: the content goes to a temporary file beside the target (same folder, so the same file
system), is flushed and fsynced, then renamed over the target. A reader sees the old file or the new
one, never a half-written one; a writer killed mid-write leaves only a `.*.tmp` file behind.

Exclusive lock: `FolderLock(path)` creates the lock file with O_EXCL and writes its owner (host, pid,
start time, command) into it. A second owner is refused with a `LockError` that names the holder. A
lock whose owner is a dead process on this host is stale and is taken over (with a warning); a lock
held from another host cannot be checked from here, so it is refused with the file to delete once the
user knows that owner is gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, IO


class LockError(RuntimeError):
    """Another live process holds the lock (the message names it and the lock file)."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, fsync it, rename it over `path`.

    The folder is created if missing. On any error the temporary file is removed and the error
    re-raised; `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> Path:
    """Write `obj` as JSON (sorted keys) to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """An exclusive, stale-aware lock held in one file; use as a context manager.

    `what` names the thing locked in messages ("store", "run folder"). The lock file holds JSON
    {host, pid, started, command}. Re-entrant within one process is not supported: a second
    `acquire` in the same process is refused like any other owner.
    """

    def __init__(self, lock_file: str | Path, what: str) -> None:
        self.lock_file = Path(lock_file)
        self.what = what
        self._held = False

    def _owner(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                "command": " ".join(sys.argv)[:500]}

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.lock_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or damaged: treated as held

    def acquire(self) -> "FolderLock":
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read_owner()
                if owner is None:
                    continue  # released between our open and our read: try again
                if self._is_stale(owner):
                    # Rename first: of two processes that both found it stale, only one wins the rename.
                    grave = self.lock_file.with_name(f"{self.lock_file.name}.stale.{os.getpid()}")
                    try:
                        os.replace(self.lock_file, grave)
                    except FileNotFoundError:
                        continue
                    grave.unlink(missing_ok=True)
                    warnings.warn(f"{self.lock_file}: took over a stale lock of {self.what} left by pid "
                                  f"{owner.get('pid')} on {owner.get('host')}, which is no longer running",
                                  stacklevel=2)
                    continue
                raise LockError(self._held_message(owner)) from None
            with os.fdopen(fd, "w") as f:
                json.dump(self._owner(), f)
                f.flush()
                os.fsync(f.fileno())
            self._held = True
            return self
        raise LockError(f"{self.lock_file}: could not take the lock of {self.what} (it changed hands repeatedly)")

    def _is_stale(self, owner: dict[str, Any]) -> bool:
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        return pid != os.getpid() and not _pid_alive(pid)

    def _held_message(self, owner: dict[str, Any]) -> str:
        if not owner:
            return f"{self.lock_file}: {self.what} is locked by another process (unreadable lock file)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        here = owner.get("host") == socket.gethostname()
        hint = ("wait for it to finish or stop it" if here else
                f"if that process is gone, delete {self.lock_file}")
        return (f"{self.what} is in use by pid {owner.get('pid')} on {owner.get('host')} since {since} "
                f"({owner.get('command', '')!s:.120}); {hint}")

    def release(self) -> None:
        if self._held:
            self._held = False
            owner = self._read_owner()
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.lock_file.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
