"""A process that takes a folder's lock, says so on stdout, and holds it until it is killed.

``python -P _lock_holder.py FOLDER lock``: a bare :class:`~dsm_engine.folder_lock.FolderLock`.
``python -P _lock_holder.py FOLDER run_dir``: a trainer's own call, ``prepare_run_dir`` with
``resume="auto"`` (what a training run does before its first step).
``python -P _lock_holder.py FOLDER race SECONDS``: try once, print ``won`` or ``lost``, hold
for SECONDS, exit.
"""

from __future__ import annotations

import sys
import time

from dsm_engine.folder_lock import FolderLock, FolderLockedError

if __name__ == "__main__":
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "race":
        try:
            lock = FolderLock(folder)
            print("won", flush=True)
        except FolderLockedError:
            print("lost", flush=True)
        time.sleep(float(sys.argv[3]))
        sys.exit(0)
    if mode == "run_dir":
        from dsm_engine.trainers.run_dir import prepare_run_dir

        lock = prepare_run_dir(folder, {"holder": True}, resume="auto", latest=lambda root: None)
    else:
        lock = FolderLock(folder)
    print("ready", flush=True)
    time.sleep(600)
