"""A short GRPO run at pp=2 (one layer per stage) under ``torchrun --nproc_per_node 2``, gloo.

``python pp_run_worker.py ROOT OUT.json [ALGORITHM]``: ROOT holds the tokenizer and train
prompts (``recipes.arithmetic.DemoPaths``). Runs 3 straight steps (run ``a``), then run ``b``:
stopped after 2 steps and resumed (``resume=auto``) for the third. ALGORITHM: ``algorithm.name``
(default grpo). Rank 0 writes both histories.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _Stop(Exception):
    pass


def tiny_pp2_config(paths, run_dir: Path, *, steps: int = 3, every: int = 1, **over):
    """A 2-layer policy split over 2 stages, 8 rows per step in microbatches of 3 + 3 + 2;
    ``over`` replaces whole top-level sections (merged into the demo's by ``grpo_config``)."""
    from dsm_engine.recipes.arithmetic import grpo_config

    sections = {
        "model": {"num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 64},
        "parallel": {"pp": 2},
        "checkpoint": {"load": None, "every": every},
        "grpo": {
            "steps": steps,
            "iterations": 2,
            "prompts_per_step": 2,
            "group_size": 4,
            "micro_batch_size": 3,
        },
        "rollout": {"max_new_tokens": 6},
        "schedule": {"lr": 1e-2},
        "reward": {"name": "parity"},
        "eval": {"every": 0},
        "logging": {"progress": False, "tensorboard": False},
    }
    return grpo_config(paths, paths.root / "none", run_dir=str(run_dir), **{**sections, **over})


def main(root: Path, out: Path, algorithm: str = "grpo") -> None:
    import torch.distributed as dist
    from _helpers import ParityReward

    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import DemoPaths
    from dsm_engine.rewards import register_reward_fn

    paths = DemoPaths(root)
    register_reward_fn("parity", lambda **kw: ParityReward(str(paths.tokenizer), **kw))

    algo = {"algorithm": {"name": algorithm}}
    straight = run_grpo(tiny_pp2_config(paths, root / "a", **algo))
    destroy_parallel(keep_process_group=True)

    def stop_after_two(step, _metrics):
        if step == 2:
            raise _Stop

    try:
        run_grpo(tiny_pp2_config(paths, root / "b", **algo), on_step_end=stop_after_two)
        raise AssertionError("run b did not stop after step 2")
    except _Stop:
        pass
    destroy_parallel(keep_process_group=True)
    resumed = run_grpo(tiny_pp2_config(paths, root / "b", resume="auto", **algo))
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"straight": straight, "resumed": resumed}))
    destroy_parallel()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])
