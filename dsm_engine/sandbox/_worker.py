"""One warm worker of the sandbox pool: it forks a fresh, confined process per program.

Started by ``dsm_engine.sandbox.pool`` with the settings as ``argv[1]`` (JSON). The worker
imports the preload modules once, drops root, enters its own user, network, IPC, UTS and
mount namespaces, then serves requests over stdin/stdout, one JSON object per line:

- first line out: ``{"ready": true, "protections": [...], "missing": {name: reason}}``
- in: ``{"code": "..."}``; out: the result dict (see ``ExecResult``).

The worker never runs model code itself: every program runs in a child forked for it (in a
new PID namespace where possible) and ends with that child, so nothing a program does to
Python state (``sys.modules``, monkey-patching, ``sys.setrecursionlimit``) reaches the next.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import linecache
import math
import os
import selectors
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from dsm_engine.sandbox import _isolation as iso

_SETUP_FAILED = 70  # exit code of a program process whose confinement could not be set up
_SCRATCH = "/tmp/scratch"  # inside the minimal root: a fresh tmpfs per program


@dataclass
class _Layers:
    """Which isolation layers this worker has (probed once at start)."""

    pid_namespace: int | None = None  # fd of the worker's own PID namespace, when it has one
    tmpfs_scratch: bool = False
    landlock: bool = False
    program_uid: int | None = None  # setuid to this in each program (None: keep the uid)
    read_roots: list[str] = field(default_factory=list)
    protections: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


def _probe_pid_namespace(pid_ns: int) -> None:
    """Raise unless this process (init of ``pid_ns``) can give a child a PID namespace of its
    own, then point the next child back at ``pid_ns``."""
    iso.unshare(iso.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if os.getpid() == 1 else 1)
    iso.setns(pid_ns, iso.CLONE_NEWPID)
    if os.waitpid(pid, 0)[1] != 0:
        raise OSError("a child of unshare(CLONE_NEWPID) is not init of its namespace")


def _set_up(settings: dict) -> _Layers:
    layers = _Layers(protections=["process", "rlimits", "process-group", "no-capabilities"])
    layers.read_roots = iso.readable_roots()

    def attempt(name: str, step) -> bool:
        try:
            step()
        except OSError as e:
            layers.missing[name] = str(e)
            return False
        layers.protections.append(name)
        return True

    root_caller = os.geteuid() == 0
    nobody_mapped = []
    flags = iso.CLONE_NEWNET | iso.CLONE_NEWIPC | iso.CLONE_NEWUTS | iso.CLONE_NEWNS
    flags |= iso.CLONE_NEWPID
    if attempt("user+network-namespace", lambda: nobody_mapped.append(iso.enter_namespaces(flags))):
        # the worker proper is init of its own PID namespace: it may hand each program a
        # fresh one (one fork per program) and takes every program with it if it dies
        iso.become_init()
        pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if nobody_mapped[0]:
            layers.program_uid = iso.NOBODY
            layers.protections.append("unprivileged-uid")

        def minimal_root() -> None:
            iso.make_mounts_private()
            iso.enter_minimal_root(layers.read_roots, iso.DEVICES, _SCRATCH)

        layers.tmpfs_scratch = attempt("minimal-root", minimal_root)
        if attempt("pid-namespace", lambda: _probe_pid_namespace(pid_ns)):
            layers.pid_namespace = pid_ns
    elif root_caller:
        # no namespaces: programs still leave root (the Python installation must then be
        # readable by nobody for imports that were not preloaded)
        layers.program_uid = iso.NOBODY
        layers.protections.append("unprivileged-uid")
    abi = iso.landlock_abi() if settings["landlock"] else 0
    if abi >= 1:
        layers.landlock = True
        layers.protections.append(f"landlock-fs (ABI {abi})")
        if abi >= 4:
            layers.protections.append("landlock-net")
        if abi >= 6:
            layers.protections.append("landlock-signals")
    else:
        layers.missing["landlock"] = (
            "kernel without Landlock, or landlockpy not installed"
            if settings["landlock"]
            else "turned off (SandboxConfig.landlock)"
        )
    return layers


# --------------------------------------------------------------------------- the program


def _program_main(code: str, settings: dict) -> int:
    """Run ``code`` as ``__main__``; returns the exit code (tracebacks go to stderr)."""
    linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(code, "<program>", "exec"), namespace)
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    except BaseException as e:  # noqa: BLE001 - every failure of the program is its result
        namespace.clear()  # frees a memory bomb's garbage before the traceback is formatted
        summary = traceback.TracebackException.from_exception(e, limit=-20)
        summary.stack = traceback.StackSummary.from_list(
            [frame for frame in summary.stack if frame.filename != __file__]
        )
        sys.stderr.write("".join(summary.format()))
        return 1


def _become_program(code: str, scratch: str, out_w: int, err_w: int, settings: dict, layers):
    """In the forked child: confine this process, then run ``code``. Never returns."""
    status = _SETUP_FAILED
    try:
        os.setsid()
        iso.die_with_parent()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, 1 << 16)
        os.chdir(scratch)
        os.environ.clear()
        os.environ.update(
            HOME=scratch, TMPDIR=scratch, PATH="/usr/bin:/bin", LANG="C.UTF-8", **settings["env"]
        )
        iso.set_limits(
            cpu_s=settings["cpu_s"],
            memory_mb=settings["memory_mb"],
            file_mb=settings["scratch_mb"],
            max_procs=settings["max_procs"],
        )
        if layers.program_uid is not None:
            iso.become_nobody(layers.program_uid, layers.program_uid)
        if layers.landlock:
            iso.landlock_restrict(layers.read_roots, scratch)
        with contextlib.suppress(OSError):  # no capabilities to drop outside a namespace
            iso.drop_capabilities()
        stdout = io.FileIO(1, "w", closefd=False)
        sys.stdout = io.TextIOWrapper(stdout, encoding="utf-8", errors="backslashreplace")
        stderr = io.FileIO(2, "w", closefd=False)
        sys.stderr = io.TextIOWrapper(
            stderr, encoding="utf-8", errors="backslashreplace", write_through=True
        )
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.argv = ["<program>"]
        sys.dont_write_bytecode = True
        status = _program_main(code, settings)
    except BaseException:  # noqa: BLE001 - report, then leave through os._exit below
        with contextlib.suppress(BaseException):
            os.write(2, f"sandbox setup failed: {traceback.format_exc()}".encode())
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


# --------------------------------------------------------------------------- supervision


def _collect(fds: dict[int, bytearray], child_pid: int, deadline: float, cap: int) -> str:
    """Read the program's pipes until the child exits; '' or 'timeout' / 'output_limit'."""
    pidfd = os.pidfd_open(child_pid)
    sel = selectors.DefaultSelector()
    try:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(pidfd, selectors.EVENT_READ)
        exited = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in sel.select(remaining):
                if key.fd == pidfd:
                    exited = True
                    sel.unregister(pidfd)
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                fds[key.fd] += chunk
                if sum(len(b) for b in fds.values()) > cap:
                    return "output_limit"
            if exited:
                # what the program wrote before exiting is already in the pipes
                for fd, buf in fds.items():
                    os.set_blocking(fd, False)
                    with contextlib.suppress(BlockingIOError):
                        while len(buf) <= cap and (chunk := os.read(fd, 1 << 16)):
                            buf += chunk
                return "output_limit" if sum(len(b) for b in fds.values()) > cap else ""
    finally:
        sel.close()
        os.close(pidfd)


def _describe(status: int | None, reason: str, stderr: str, settings: dict) -> tuple[str, str]:
    """(status name, one-line error) of a finished program."""
    if reason == "timeout":
        return "timeout", f"TimeoutError: program ran past {settings['timeout_s']:g} s"
    if reason == "output_limit":
        limit = settings["output_bytes"]
        return "output_limit", f"OutputLimitError: program printed more than {limit} bytes"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if status is None:
        return "sandbox_error", "SandboxError: the program's exit status was lost"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout", f"TimeoutError: program used more than {settings['cpu_s']} s of CPU"
        name = signal.Signals(sig).name
        if sig == signal.SIGSEGV:
            return "crashed", f"Crash: {name} (a stack overflow, e.g. too deep a recursion)"
        return "crashed", f"Crash: program killed by {name}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "ok", ""
    if code == _SETUP_FAILED and stderr.startswith("sandbox setup failed"):
        return "sandbox_error", "SandboxError: " + stderr.strip()[-300:]
    if last.startswith("MemoryError") or "MemoryError" in stderr[-2000:]:
        limit = settings["memory_mb"]
        return "memory", f"MemoryError: program exceeded the {limit} MiB memory limit"
    return "error", last or f"program exited with code {code}"


class _Worker:
    def __init__(self, settings: dict, layers: _Layers):
        self.settings = settings
        self.layers = layers

    def _scratch(self) -> str:
        owner = self.layers.program_uid
        if self.layers.tmpfs_scratch:
            iso.mount_tmpfs(_SCRATCH, self.settings["scratch_mb"], uid=owner or 0)
            return _SCRATCH
        scratch = tempfile.mkdtemp(prefix="dsm-sandbox-")
        if owner is not None:
            os.chown(scratch, owner, owner)
        return scratch

    def _release(self, scratch: str) -> None:
        if self.layers.tmpfs_scratch:
            iso.unmount(scratch)
        else:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)

    def run(self, code: str, timeout_s: float | None = None) -> dict:
        layers = self.layers
        settings = self.settings
        if timeout_s is not None:
            settings = {**settings, "timeout_s": timeout_s, "cpu_s": math.ceil(timeout_s)}
        start = time.monotonic()
        scratch = self._scratch()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if layers.pid_namespace is not None:
            # the program becomes init of a fresh PID namespace: when it ends, the kernel
            # kills everything it started
            iso.unshare(iso.CLONE_NEWPID)
        child = os.fork()
        if child == 0:
            os.close(out_r)
            os.close(err_r)
            _become_program(code, scratch, out_w, err_w, settings, layers)
        if layers.pid_namespace is not None:
            iso.setns(layers.pid_namespace, iso.CLONE_NEWPID)  # ready for the next unshare
        os.close(out_w)
        os.close(err_w)
        try:
            buffers = {out_r: bytearray(), err_r: bytearray()}
            reason = _collect(
                buffers, child, start + settings["timeout_s"], settings["output_bytes"]
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if layers.pid_namespace is None:
                    os.killpg(child, signal.SIGKILL)  # the program and its children
                elif reason:
                    os.kill(child, signal.SIGKILL)  # init's death ends the namespace
            status = os.waitpid(child, 0)[1]
        finally:
            os.close(out_r)
            os.close(err_r)
            self._release(scratch)
        cap = settings["output_bytes"]
        stdout = bytes(buffers[out_r][:cap]).decode("utf-8", errors="replace")
        stderr = bytes(buffers[err_r][:cap]).decode("utf-8", errors="replace")
        name, error = _describe(status, reason, stderr, settings)
        exit_code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
        return {
            "status": name,
            "stdout": stdout,
            "stderr": stderr,
            "error": error,
            "exit_code": exit_code,
            "wall_s": round(time.monotonic() - start, 6),
        }


def main(argv: list[str]) -> int:
    settings = json.loads(argv[0])
    os.environ.update(settings["env"])  # thread counts before numpy and friends load
    for name in settings["preload"]:
        with contextlib.suppress(ImportError):
            __import__(name)
    if settings["warmup"]:
        exec(compile(settings["warmup"], "<warmup>", "exec"), {"__name__": "__warmup__"})
    with contextlib.suppress(ImportError):  # loaded before programs lose access to it
        import landlockpy  # noqa: F401
    import gc

    gc.freeze()  # preloaded objects stay shared with program processes (no copy-on-write)

    layers = _set_up(settings)
    worker = _Worker(settings, layers)
    with open(0, "rb", closefd=False) as requests, open(1, "wb", 0, closefd=False) as replies:
        ready = {"ready": True, "protections": layers.protections, "missing": layers.missing}
        replies.write((json.dumps(ready) + "\n").encode())
        for line in iter(requests.readline, b""):
            try:
                request = json.loads(line)
                result = worker.run(request["code"], request.get("timeout_s"))
            except Exception as e:  # noqa: BLE001 - the pool reports it as the program's result
                result = {"status": "sandbox_error", "error": f"SandboxError: {e!r}"}
            replies.write((json.dumps(result) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
