"""A sandbox for model-written Python: program-of-thought answers and tool-integrated reasoning.

``Sandbox(SandboxConfig(...)).run_many(programs)`` runs each program in its own process on a
pool of warm workers (one per core; numpy and sympy imported once per worker) and returns
one :class:`ExecResult` per program: ``ok``, ``error``, ``timeout``, ``memory``,
``output_limit``, ``crashed`` or ``sandbox_error``, with what it printed and a one-line error.
``Sandbox.protections`` lists the layers that are active on this machine and
``Sandbox.missing`` says why any other is not; ``SandboxConfig.require`` turns a missing
layer into an error.

What it protects against (each layer where the kernel offers it, without root):

- Runaway programs: a wall-clock limit enforced by the worker, a CPU-time limit
  (``RLIMIT_CPU``), an address-space limit (``RLIMIT_AS``: memory bombs end in
  ``MemoryError``), a cap on printed output (the program is killed past it), a limit on
  file size and on the process count (``RLIMIT_FSIZE``, ``RLIMIT_NPROC``: fork bombs).
- Leftover processes: each program is init of its own PID namespace, so the kernel kills
  everything it started when it ends or is killed; without PID namespaces the program leads
  its own process group and the whole group is killed.
- Interference between programs: every program is a fresh fork of a pristine worker, so
  changes to interpreter state die with it; the worker itself never runs model code.
- The network: a new network namespace (no interfaces but a downed loopback), and Landlock
  denies TCP bind/connect (ABI 4) and, from ABI 10, UDP.
- The user's files: the worker ``chroot``s into a minimal root of read-only binds of the
  Python installation (prefixes, stdlib, site-packages) and the system libraries, plus
  ``/dev/null``, ``/dev/zero``, ``/dev/urandom``: ``/etc``, ``/proc``, home folders and the
  checkout do not exist there. Landlock independently allows reading only those folders,
  writing only the scratch folder, and executing nothing (no ``subprocess``/``os.system``).
  The scratch folder is a fresh size-limited tmpfs per program, gone when the program ends.
- The caller's processes: a root caller's programs run as ``nobody`` (mapped through the
  user namespace), every program with all capabilities dropped, in its own PID namespace
  (the worker and the caller are invisible), and Landlock (ABI 6) scopes signals and
  abstract unix sockets to the sandbox.

What it does not protect against:

- Kernel exploits and CPU side channels: programs share the kernel; there is no seccomp
  syscall filter and no virtual machine boundary.
- Where a layer is missing (old kernel, user namespaces disabled, no ``landlockpy``), its
  protection is missing too: without both the minimal root and Landlock a program can read
  every file the worker's user can (root callers run it as ``nobody``, which still reads
  world-readable files); without network namespaces and Landlock it can reach the network;
  without either PID namespaces or Landlock signal scoping a non-root caller's processes
  can be signalled.
- ``max_procs`` counts every process of the program's uid: for a non-root caller (whose
  programs keep the caller's uid) that includes the caller's own processes.
- Memory outside ``RLIMIT_AS`` (page cache, tmpfs scratch up to ``scratch_mb``) and CPU
  starvation of other processes within the limits; there are no cgroups.
- Resource exhaustion across the pool's limits: ``workers`` programs may each use
  ``memory_mb`` at once.
"""

from dsm_engine.sandbox.pool import STATUSES, ExecResult, Sandbox, SandboxConfig, SandboxError

__all__ = ["STATUSES", "ExecResult", "Sandbox", "SandboxConfig", "SandboxError"]
