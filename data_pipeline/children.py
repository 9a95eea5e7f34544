"""Child processes that die with their parent.

A killed ``dsm data mine`` (SIGKILL, the OOM killer, a lost terminal) must not leave a fastText
trainer or a pool worker behind, still writing into the folder that the rerun is rebuilding.
Each child calls :func:`die_with_parent` first thing: on Linux the kernel then sends it SIGKILL
when its parent dies (``PR_SET_PDEATHSIG``); elsewhere a daemon thread polls the parent pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def die_with_parent(parent_pid: int | None = None, poll_s: float = 1.0) -> None:
    """Make this process end when its parent does.

    Args:
        parent_pid: the parent this process was started by; when given and already gone (it
            died before this call could take effect), the process exits at once.
        poll_s: how often the fallback thread looks at the parent (non-Linux systems only).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        watched = parent_pid if parent_pid is not None else os.getppid()
        threading.Thread(target=_watch_parent, args=(watched, poll_s), daemon=True).start()
    # checked after arming: a parent that died before then would never send the signal
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
