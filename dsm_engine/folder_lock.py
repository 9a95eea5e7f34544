"""An exclusive lock on a folder for the life of a run: one writer at a time, named when refused.

The lock is an ``flock(2)`` on a small file *beside* the folder, ``<parent>/.<name>.dsm-lock``
(beside, so that the folder holds only what the run writes). The file records the holder (pid,
host, command, start time) so that a refused run can say who holds it. The kernel drops an
flock when its holder dies, even by SIGKILL: a lock left by a dead process is free, and the
next run takes it over (and says whose it was). Two runs racing for it cannot both win.

What is guaranteed, and what is not:

- exclusive between processes of one host, and between hosts where the file system keeps flock
  coherent across clients (NFSv4, NFSv3 with lockd, Lustre mounted ``-o flock``, GPFS, CephFS);
- where locks are local to each client (NFS ``local_lock=flock``, Lustre ``localflock``), two
  hosts can both hold it: that is not detected;
- where the file system refuses flock (or the lock file cannot be created), the run goes on
  unlocked and says so once on stderr;
- children forked by the holder drop their copy at fork and exec'd children never see it
  (close-on-exec): only the process that took the lock holds it.

Hand-written rather than ``filelock``: its Unix lock keeps no holder record (a refusal could not
name the pid and host), and the pid, host and lock must live in one file to stay consistent.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import functools
import json
import os
import socket
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

# errno values meaning "this file system does not do flock" (as opposed to "someone holds it")
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a folder lock."""

    pid: int
    host: str
    since: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.since}: {self.command})"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""

    def __init__(self, folder: Path, holder: Holder | None) -> None:
        who = holder.describe() if holder else "another process (it has not written its name yet)"
        super().__init__(
            f"{folder} is in use by {who}; wait for that run to end or choose another folder"
        )
        self.folder = folder
        self.holder = holder


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.dsm-lock`` (symlinks resolved, so every
    path to one folder shares one lock)."""
    real = Path(folder).resolve()
    return real.parent / f".{real.name}.dsm-lock"


def _read_holder(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return Holder(**data) if isinstance(data, dict) else None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None  # a holder that died mid-write, or a file that is not ours


def _me(command: str) -> Holder:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return Holder(os.getpid(), socket.gethostname(), now, command[:200])


def _release_fd(fd: int) -> None:
    # An empty record tells the next holder that this one ended cleanly.
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the flock


def _drop_in_child(ref: weakref.ref[FolderLock]) -> None:
    lock = ref()
    if lock is not None:
        lock._forget()


class FolderLock:
    """Hold ``folder``'s lock from construction until :meth:`release` (or the end of a ``with``).

    Raises :class:`FolderLockedError` naming the holder when a live process holds it.
    ``took_over``: the holder recorded by a process that died holding it (None after a clean
    release). ``held``: False when the file system could not lock (``warning`` says why).
    """

    def __init__(self, folder: str | Path, *, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = lock_path(folder)
        self.took_over: Holder | None = None
        self.warning: str | None = None
        self._finalizer: weakref.finalize | None = None
        fd = self._open()
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderLockedError(self.folder, holder) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _UNSUPPORTED:
                raise
            self._unlocked(f"the file system refuses flock ({e.strerror})")
            return
        self.took_over = _read_holder(fd)
        if self.took_over is not None:
            print(
                f"{self.folder}: taking over the lock of {self.took_over.describe()}, "
                "which ended without releasing it",
                file=sys.stderr,
            )
        me = _me(command if command is not None else " ".join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        self._finalizer = weakref.finalize(self, _release_fd, fd)
        self._fd = fd
        os.register_at_fork(after_in_child=functools.partial(_drop_in_child, weakref.ref(self)))

    def _open(self) -> int | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self._unlocked(f"cannot create {self.path} ({e.strerror})")
            return None

    def _unlocked(self, why: str) -> None:
        self.warning = (
            f"warning: {self.folder} is not locked: {why}; concurrent runs on it are not detected"
        )
        print(self.warning, file=sys.stderr)

    def _forget(self) -> None:
        """In a forked child: close the inherited copy without touching the parent's lock."""
        if self._finalizer is not None and self._finalizer.detach() is not None:
            os.close(self._fd)

    @property
    def held(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
