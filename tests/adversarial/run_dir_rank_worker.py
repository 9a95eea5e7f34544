"""Worker of test_run_folder_lock.py, launched with ``torchrun --nproc_per_node 2``.

``run_dir_rank_worker.py HELD FREE OUT``: every rank calls ``prepare_run_dir`` on HELD (locked
by the test) and on FREE; rank 0 writes what each rank saw to OUT (JSON, keyed by rank).
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from dsm_engine.folder_lock import FolderLock, FolderLockedError
from dsm_engine.trainers.run_dir import RunDirError, prepare_run_dir


def _no_checkpoint(root):
    return None


if __name__ == "__main__":
    held, free, out = sys.argv[1:4]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen: dict[str, object] = {"pid": os.getpid()}
    try:
        prepare_run_dir(held, {}, resume="auto", latest=_no_checkpoint)
        seen["held"] = "not refused"
    except RunDirError as e:
        seen["held"] = str(e)
    run = prepare_run_dir(free, {}, latest=_no_checkpoint)
    seen["free"] = "ok"
    if rank == 1:
        try:
            FolderLock(free).release()
            seen["free_locked_by"] = None
        except FolderLockedError as e:
            seen["free_locked_by"] = e.holder.pid if e.holder else "unknown"
    dist.barrier()
    run.release()
    everyone: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, seen)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({str(r): s for r, s in enumerate(everyone)}, f)
    dist.destroy_process_group()
