"""Hostile programs: each ends with a clear error result and leaves the host and the next
program untouched (same warm workers, same pids, nothing left running)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

SIMPLE = "print(sum(range(10)))"
QUICK_S = 1.5  # the time limit of programs expected to run away
GONE = r"PermissionError|FileNotFoundError"


def _program_processes(sandbox) -> list[psutil.Process]:
    """Processes below the workers proper (with namespaces, each worker process is a relay
    whose only child, init of the worker's PID namespace, is the worker proper)."""
    depth = 2 if "user+network-namespace" in sandbox.protections else 1
    found = []
    for pid in sandbox.worker_pids:
        level = [psutil.Process(pid)]
        for _ in range(depth):
            level = [child for p in level for child in p.children()]
        found += [d for p in level for d in (p, *p.children(recursive=True))]
    return found


def _assert_host_and_pool_unharmed(sandbox, pids_before):
    """The next program runs normally on the same workers, and no program process survives."""
    after = sandbox.run_many([SIMPLE] * 4)
    assert [r.status for r in after] == ["ok"] * 4 and {r.stdout for r in after} == {"45\n"}
    assert sandbox.worker_pids == pids_before
    deadline = time.monotonic() + 2
    while (leftovers := _program_processes(sandbox)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers == [], f"program processes survived: {leftovers}"


HOSTILE = {
    "infinite loop": ("while True:\n    pass", "timeout", r"ran past 1.5 s"),
    "sleeps forever": ("import time\ntime.sleep(10**6)", "timeout", r"ran past"),
    "closes stdout and spins": (
        "import os\nos.close(1)\nwhile True:\n    pass",
        "timeout",
        r"ran past",
    ),
    "ignores SIGXCPU": (
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass",
        "timeout|crashed",
        r"ran past|CPU|SIGKILL",
    ),
    "fork bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "timeout|error|crashed",
        r".",
    ),
    "daemonised child": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(10**6)\nprint('parent done')",
        "ok",
        r"^$",
    ),
    "memory bomb": ("x = bytearray(8 * 1024**3)", "memory", r"MemoryError: .*512 MiB"),
    "growing list": ("x = []\nwhile True:\n    x.append(' ' * 10**7)", "memory", r"MemoryError"),
    "huge output": ("while True:\n    print('spam' * 1000)", "output_limit", r"more than 10000"),
    "huge stderr": (
        "import sys\nwhile True:\n    sys.stderr.write('x' * 4096)",
        "output_limit",
        r"more than",
    ),
    # the program's root holds only the Python installation (FileNotFoundError), and Landlock
    # denies the rest (PermissionError)
    "read /etc/passwd": ("print(open('/etc/passwd').read())", "error", GONE),
    "list the root folder": ("import os\nprint(os.listdir('/'))", "error", r"PermissionError"),
    "read /proc": ("print(open('/proc/1/cmdline').read())", "error", GONE),
    "read the checkout": (f"print(open({str(REPO / 'pyproject.toml')!r}).read())", "error", GONE),
    "read beside the checkout": (
        f"import os\nprint(os.listdir({str(REPO.parent)!r}))",
        "error",
        GONE,
    ),
    "write outside scratch": (
        "open('/tmp/dsm-sandbox-escape', 'w').write('x')",
        "error",
        r"PermissionError|FileNotFoundError",
    ),
    "write into the checkout": (
        f"open({str(REPO / 'sandbox-escape')!r}, 'w').write('x')",
        "error",
        GONE,
    ),
    "giant scratch file": (
        "with open('big', 'wb') as f:\n    for _ in range(10**4):\n        f.write(b'0' * 10**6)",
        "error",
        r"OSError|File too large|No space",
    ),
    "run a shell": (
        "import subprocess\nsubprocess.run(['id'], check=True)",
        "error",
        r"PermissionError|FileNotFoundError",
    ),
    "os.system": (
        "import os, sys\nstatus = os.system('id > /dev/null')\nsys.exit(0 if status else 9)",
        "ok",
        r"^$",
    ),
    "deep recursion in C": (
        "import sys, json\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**5):\n"
        "    x = [x]\nprint(len(json.dumps(x)))",
        "crashed",
        r"SIGSEGV",
    ),
    "recursion limit error": (
        "import sys\nsys.setrecursionlimit(5000)\ndef f(n):\n    return f(n + 1)\nf(0)",
        "error",
        r"RecursionError",
    ),
    # as init of its PID namespace the program may be immune to its own SIGKILL: either is fine
    "kill own process group": ("import os, signal\nos.killpg(0, signal.SIGKILL)", "ok|crashed", ""),
    # what matters is that the host and the pool survive (checked after every program)
    "kill every process it can": (
        "import os, signal, time\nos.kill(-1, signal.SIGKILL)\ntime.sleep(0.2)\nprint('alive')",
        "ok|crashed|error",
        r"^$|ProcessLookupError|KILL",
    ),
    "ctypes unshare": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0\n"
        "assert libc.umount2(b'/tmp', 2) != 0\nraise SystemExit('refused')",
        "error",
        r"refused",
    ),
    "fullwidth identifiers (NFKC)": (
        "ｐｒｉｎｔ(ｏｐｅｎ('/etc/passwd').read())",
        "error",
        GONE,
    ),
    "null byte in source": ("print(1)\x00", "error", r"null bytes|ValueError|SyntaxError"),
    "syntax error": ("def f(:\n    pass", "error", r"SyntaxError"),
    "exit with a code": ("raise SystemExit(3)", "error", r"exited with code 3"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_ends_with_a_clear_error(sandbox, name):
    code, statuses, error = HOSTILE[name]
    pids = sandbox.worker_pids
    limit = QUICK_S if statuses.startswith("timeout") else None
    result = sandbox.run(code, timeout_s=limit)
    assert result.status in statuses.split("|"), (result.status, result.error, result.stderr[-500:])
    assert re.search(error, result.error), result.error
    if limit:
        # the limit, plus killing what the program started (slow for a fork bomb on a busy machine)
        assert result.wall_s < limit + 8.0
    _assert_host_and_pool_unharmed(sandbox, pids)


def test_nothing_is_written_outside_the_scratch_folder(sandbox):
    assert not Path("/tmp/dsm-sandbox-escape").exists()
    assert not (REPO / "sandbox-escape").exists()
    # the scratch folder is private to the program: the next one starts empty
    first = sandbox.run("open('note', 'w').write('x')\nimport os\nprint(os.listdir('.'))")
    assert first.stdout == "['note']\n"
    assert all(r.stdout == "[]\n" for r in sandbox.run_many(["import os\nprint(os.listdir())"] * 4))


def test_a_socket_reaches_nothing_not_even_the_hosts_loopback(sandbox):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\ns = socket.socket()\ns.settimeout(1)\n"
        f"s.connect(('127.0.0.1', {port}))\ns.sendall(b'leak')"
    )
    try:
        result = sandbox.run(code)
        assert result.status == "error" and re.search(r"PermissionError|unreachable", result.error)
        udp = sandbox.run(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'leak', ('127.0.0.1', {port}))"
        )
        assert udp.status == "error", udp  # the loopback is down in the network namespace
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_signals_never_reach_the_worker_or_the_caller(sandbox):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    pids = sandbox.worker_pids
    try:
        code = (
            "import os, signal\nfailures = 0\n"
            f"for pid, sig in [({os.getpid()}, signal.SIGUSR1), ({pids[0]}, signal.SIGKILL), "
            f"({pids[-1]}, signal.SIGKILL)]:\n"
            "    try:\n        os.kill(pid, sig)\n    except OSError:\n        failures += 1\n"
            "print(failures)"
        )
        result = sandbox.run(code)
        time.sleep(0.2)
        assert result.ok and result.stdout == "3\n", result
        assert received == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
    _assert_host_and_pool_unharmed(sandbox, pids)


def test_state_changes_die_with_the_program(sandbox):
    pids = sandbox.worker_pids
    poison = (
        "import builtins, sys, math\nsys.modules['math'] = None\nbuiltins.print = None\n"
        "math.pi = 3\nsys.setrecursionlimit(50)\nimport os\nos.environ['X'] = 'poisoned'"
    )
    assert all(r.ok for r in sandbox.run_many([poison] * 4))
    check = (
        "import math, os, sys\nprint(math.pi > 3.14, os.environ.get('X'), sys.getrecursionlimit())"
    )
    assert {r.stdout for r in sandbox.run_many([check] * 4)} == {"True None 1000\n"}
    _assert_host_and_pool_unharmed(sandbox, pids)


def test_unicode_output_arrives_as_valid_text(sandbox):
    code = (
        "import sys\nprint('\\ud800 lone surrogate')\nprint('\\u202e bidi \\x00 nul 数学')\n"
        "sys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff\\xfe raw bytes\\n')"
    )
    result = sandbox.run(code)
    assert result.ok, result
    assert "数学" in result.stdout and "raw bytes" in result.stdout
    result.stdout.encode("utf-8")  # no surrogates left: it can be written to JSON Lines
    assert json.loads(json.dumps(result.to_dict(), ensure_ascii=False)) == result.to_dict()


def test_import_tricks_find_only_the_python_installation(sandbox):
    code = (
        "import importlib\nfailures = []\n"
        "for name in ['dsm_engine.eval.report', 'sympy.abc', 'statistics']:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failures.append(name)\n"
        "import dsm_engine\n"
        "try:\n    open(dsm_engine.__file__).read()\n"
        "except OSError:\n    failures.append('dsm_engine source')\n"
        "print(failures)"
    )
    result = sandbox.run(code)
    assert result.ok, result
    # the project beside the checkout is unreadable; the Python installation is not
    assert result.stdout == "['dsm_engine.eval.report', 'dsm_engine source']\n"


def test_a_killed_worker_is_replaced_and_its_program_reported(tmp_path):
    from dsm_engine.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=5, workers=1)) as box:
        victim = box.worker_pids[0]
        killer = threading.Timer(0.5, os.kill, (victim, signal.SIGKILL))
        killer.start()
        result = box.run("import time\ntime.sleep(3)")
        killer.join()
        assert result.status == "sandbox_error" and "worker" in result.error
        assert box.worker_pids != [victim] and box.stats.worker_restarts == 1
        assert box.run(SIMPLE).stdout == "45\n"
