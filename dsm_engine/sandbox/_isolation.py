"""Linux isolation steps for sandboxed programs, each optional and probed before use.

Used only inside the worker process (``_worker.py``) and the program processes it forks;
nothing here runs in the caller's process. Every step is a thin wrapper over a kernel
mechanism: ``setrlimit``, ``setuid``, ``unshare`` (user, network, IPC, UTS, mount and PID
namespaces), bind and tmpfs mounts with ``chroot``, ``capset``, ``prctl`` and Landlock
(through the ``landlockpy`` bindings).
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
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2

NOBODY = 65534  # the unprivileged uid/gid a root caller's programs run as
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")

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


def setns(fd: int, nstype: int) -> None:
    """``setns(2)`` (``os.setns`` exists only from Python 3.12)."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
    else:
        _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def become_init() -> None:
    """Fork; the child returns as init (pid 1) of the PID namespace unshared before, and this
    process stays behind only to pass on the child's exit status. If init dies, the kernel
    kills every process in its namespace: nothing a program started can outlive the worker."""
    child = os.fork()
    if child == 0:
        die_with_parent()
        return
    status = os.waitpid(child, 0)[1]
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (no orphaned program outlives its worker)."""
    import signal

    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def become_nobody(uid: int = NOBODY, gid: int = NOBODY) -> None:
    """Become ``uid``/``gid`` with no supplementary groups (drops every capability)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def enter_namespaces(flags: int) -> bool:
    """Unshare a new user namespace plus ``flags``; this process becomes root inside it.

    Returns whether ``NOBODY`` is mapped too (so that programs can run as an unprivileged
    uid). A root caller maps both through a helper left in the parent namespace (only there
    may several ids be mapped); anyone else maps just their own uid, which needs no privilege
    where unprivileged user namespaces are allowed. Inside, this process holds capabilities
    over the new namespaces only (it can mount, create PID namespaces), never over the host's.
    """
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        unshare(CLONE_NEWUSER | flags)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        return False
    go_r, go_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # still root in the parent namespace: writes the maps, then leaves
        status = 1
        try:
            os.close(go_w)
            if os.read(go_r, 1) == b"1":
                target = os.getppid()
                for name in ("uid_map", "gid_map"):
                    Path(f"/proc/{target}/{name}").write_text(f"0 0 1\n{NOBODY} {NOBODY} 1\n")
                status = 0
        finally:
            os._exit(status)
    os.close(go_r)
    try:
        unshare(CLONE_NEWUSER | flags)
    except OSError:
        os.close(go_w)
        os.waitpid(helper, 0)
        raise
    os.write(go_w, b"1")
    os.close(go_w)
    if os.waitpid(helper, 0)[1] != 0:
        raise OSError("writing the user namespace's uid/gid maps failed")
    return True


def make_mounts_private() -> None:
    """Stop mount events propagating between this mount namespace and the host's."""
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")


def mount_tmpfs(path: str, size_mb: int, mode: int = 0o700, uid: int = 0) -> None:
    """A fresh tmpfs of ``size_mb`` MiB on ``path`` (visible in this mount namespace only)."""
    options = f"size={size_mb}m,mode={mode:o},uid={uid},gid={uid}".encode()
    _check(
        _libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options),
        f"mount tmpfs on {path}",
    )


def unmount(path: str) -> None:
    _check(_libc.umount2(path.encode(), _MNT_DETACH), f"umount {path}")


_KEPT_FLAGS = 4 | 8 | 1024 | 2048 | 4096  # nodev, noexec, noatime, nodiratime, relatime


def _bind(source_fd: int, target: str, writable: bool) -> None:
    source = f"/proc/self/fd/{source_fd}"
    _check(_libc.mount(source.encode(), target.encode(), None, _MS_BIND | _MS_REC, None), target)
    # a user namespace may add mount flags but never clear the source's: keep those
    flags = _MS_REMOUNT | _MS_BIND | _MS_NOSUID | (os.statvfs(source).f_flag & _KEPT_FLAGS)
    if not writable:
        flags |= _MS_RDONLY | _MS_NODEV
    _check(_libc.mount(None, target.encode(), None, flags, None), f"remount {target}")


def enter_minimal_root(read_roots: list[str], devices: tuple[str, ...], scratch: str) -> None:
    """``chroot`` into a new root holding only ``read_roots`` (read-only binds at their usual
    paths), the ``devices`` and an empty ``scratch`` mount point: nothing else of the host's
    filesystem exists there. Needs a private mount namespace this process administers."""
    sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in [*read_roots, *devices]}
    try:
        new_root = "/tmp"  # covered by a tmpfs here: the host's /tmp stays untouched
        mount_tmpfs(new_root, 1, mode=0o755)
        for path, fd in sorted(sources.items()):
            target = new_root + path
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(target, 0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                open(target, "a").close()  # a mount point for a file
            _bind(fd, target, writable=path in devices)
        os.makedirs(new_root + scratch, 0o755)
    finally:
        for fd in sources.values():
            os.close(fd)
    os.chroot(new_root)
    os.chdir("/")


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
    roots: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates}):  # parents sort first
        inside = any(path.startswith(root.rstrip("/") + "/") for root in roots)
        if path != "/" and os.path.exists(path) and not inside:
            roots.append(path)
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
        for device in DEVICES:
            ruleset.allow_path(device, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        ruleset.restrict()
