"""A 2-iteration GRPO run with reward-model retraining under ``torchrun --nproc_per_node 2``.

``python iterative_rm_worker.py DEMO_ROOT RM_CKPT RUN_DIR TP OUT.json``: every rank runs
``run_grpo`` (tp=TP, dp=2/TP); rank 0 writes the metrics and the scorer paths it loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch.distributed as dist
    from test_iterative_rm import _config, _spied_run

    from dsm_engine.recipes.arithmetic import DemoPaths

    root, rm, run, tp, out = sys.argv[1:6]
    cfg = _config(DemoPaths(Path(root)), rm, run, parallel={"tp": int(tp)})
    dist.init_process_group("gloo")  # kept across destroy_parallel so rank 0 can still write
    seen = _spied_run(cfg)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"history": seen["history"], "paths": seen["paths"]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
