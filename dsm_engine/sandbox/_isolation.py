"""Linux isolation steps for sandboxed programs, each optional and probed before use.

Used only inside the worker process (``_worker.py``) and the program processes it forks;
nothing here runs in the caller's process. Every step is a thin wrapper over a kernel
mechanism: ``setrlimit``, ``setuid``, ``unshare`` (user, network, IPC, UTS, mount and PID
namespaces), a tmpfs mount, ``prctl`` and Landlock (through the ``landlockpy`` bindings).
"""

from __future__ import annotations

import ctypes
import os
import resource
import site
import sys
from collections.abc import Iterable
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2

NOBODY = 65534  # the unprivileged uid/gid a root caller's programs run as

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """``unshare(2)`` (``os.unshare`` exists only from Python 3.12)."""
    if hasattr(os, "unshare"):
        os.unshare(flags)
    else:
        _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (no orphaned program outlives its worker)."""
    import signal

    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def drop_root(uid: int = NOBODY, gid: int = NOBODY) -> None:
    """Become ``uid``/``gid`` with no supplementary groups (only when running as root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    # a uid change makes the process non-dumpable, which locks /proc/self/uid_map
    prctl(_PR_SET_DUMPABLE, 1)


def enter_namespaces(flags: int) -> None:
    """Unshare a new user namespace plus ``flags`` and map our uid/gid to root inside it.

    Needs no privilege where unprivileged user namespaces are allowed. Inside, this process
    holds capabilities over the new namespaces only (it can mount a tmpfs, create a PID
    namespace), never over the host's.
    """
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | flags)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def make_mounts_private() -> None:
    """Stop mount events propagating between this mount namespace and the host's."""
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")


def mount_tmpfs(path: str, size_mb: int) -> None:
    """A fresh tmpfs of ``size_mb`` MiB on ``path`` (visible in this mount namespace only)."""
    options = f"size={size_mb}m,mode=0700".encode()
    _check(
        _libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options),
        f"mount tmpfs on {path}",
    )


def unmount(path: str) -> None:
    _check(_libc.umount2(path.encode(), _MNT_DETACH), f"umount {path}")


def drop_capabilities() -> None:
    """Clear every capability (effective, permitted, inheritable, ambient): the program keeps
    none over the worker's namespaces, so it cannot mount, unmount or change the uid map."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} sets, all zero
    _check(_libc.capset(header, data), "capset")
    prctl_ambient_clear = 47, 4  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    _check(_libc.prctl(*prctl_ambient_clear, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def set_limits(*, cpu_s: int, memory_mb: int, file_mb: int, max_procs: int) -> None:
    """Resource limits of a program process (inherited by anything it forks)."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * mb, memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * mb, file_mb * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))


def readable_roots() -> list[str]:
    """Folders a program may read: the Python installation (interpreter prefixes, stdlib,
    site-packages) and the system's shared libraries. Never ``/`` nor anything else."""
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        *site.getsitepackages(),
        *(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))),
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/etc/ld.so.cache",
    }
    roots = []
    for path in sorted(candidates):
        real = os.path.realpath(path)
        if real != "/" and os.path.exists(real) and real not in roots:
            roots.append(real)
    return roots


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: unavailable or ``landlockpy`` not installed)."""
    try:
        import landlockpy
    except ImportError:
        return 0
    return landlockpy.abi_version()


def landlock_restrict(read_roots: Iterable[str], scratch: str) -> None:
    """Confine this process and its children with Landlock: read (never execute) under
    ``read_roots``, read and write under ``scratch``, nothing else on the filesystem; no TCP
    bind or connect (ABI >= 4; UDP from ABI 10); no signals to, nor abstract unix sockets of, processes
    outside the sandbox (ABI >= 6). Rights the kernel lacks are dropped (best effort)."""
    from landlockpy import AccessFS, AccessNet, Ruleset, Scope

    read = AccessFS.READ_FILE | AccessFS.READ_DIR
    write = (
        AccessFS.WRITE_FILE
        | AccessFS.REMOVE_DIR
        | AccessFS.REMOVE_FILE
        | AccessFS.MAKE_DIR
        | AccessFS.MAKE_REG
        | AccessFS.TRUNCATE
    )
    net = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP | AccessNet.BIND_UDP
    with Ruleset(
        handled_net=net | AccessNet.CONNECT_SEND_UDP,
        scoped=Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL,
    ) as ruleset:
        for root in read_roots:
            # a rule on a file may only hold file rights (the kernel refuses READ_DIR there)
            ruleset.allow_path(root, read if os.path.isdir(root) else AccessFS.READ_FILE)
        ruleset.allow_path(scratch, read | write)
        for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
            ruleset.allow_path(device, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        ruleset.restrict()
