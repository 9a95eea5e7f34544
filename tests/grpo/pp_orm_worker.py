"""GRPO at pp=2 with a learned outcome reward model, under ``torchrun --nproc_per_node 2``.

``python pp_orm_worker.py ROOT OUT.json``: ROOT holds the tokenizer and train prompts
(``recipes.arithmetic.DemoPaths``). Both ranks train an ORM at pp=2 (``dsm train rm``, one layer
per stage) on synthetic labels, then run 2 GRPO steps at pp=2 with ``reward.supervision=orm``
scoring with it; the iteration boundary between the steps continues the reward model at pp=2
and switches the scorer to it (iterative RL). Rank 0 writes the GRPO history.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

RM_ARCH = {
    "num_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "ffn_hidden_size": 64,
    "vocab_size": 384,
    "seq_length": 64,
    "max_position_embeddings": 128,
}


def _write_labels(path: Path) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(40):
            p = [rng.randrange(3, 384) for _ in range(rng.randint(2, 6))]
            r = [rng.randrange(3, 384) for _ in range(rng.randint(2, 8))]
            row = {"prompt_ids": p, "response_ids": r, "label": float(r[-1] % 2)}
            f.write(json.dumps(row) + "\n")


def train_rm(root: Path) -> Path:
    import torch.distributed as dist

    from dsm_engine.config import from_dict
    from dsm_engine.trainers.reward_model import RewardModelConfig, run_reward_model

    labels = root / "orm0.jsonl"
    if dist.get_rank() == 0:
        _write_labels(labels)
    dist.barrier()
    cfg = from_dict(
        RewardModelConfig,
        {
            "run_dir": str(root / "orm0"),
            "kind": "orm",
            "model": dict(RM_ARCH),
            "parallel": {"pp": 2},
            "train": {"steps": 2, "micro_batch_size": 10, "global_batch_size": 20},
            "schedule": {"lr": 1e-3},
            "data": {"train_path": str(labels)},
            "logging": {"progress": False, "tensorboard": False},
        },
    )
    run_reward_model(cfg)
    return root / "orm0" / "checkpoints"


def grpo_cfg(paths, rm: Path, run_dir: Path):
    from pp_run_worker import tiny_pp2_config

    return tiny_pp2_config(
        paths,
        run_dir,
        steps=2,
        every=1000,
        reward={"supervision": "orm", "model_path": str(rm)},
        rm_update={
            "steps": 2,
            "prompts": 2,
            "samples": 4,
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "lr": 1e-3,
            "eval_fraction": 0.0,
        },
    )


def main(root: Path, out: Path) -> None:
    import torch.distributed as dist

    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import DemoPaths

    dist.init_process_group("gloo")  # kept across destroy_parallel so rank 0 can still write
    rm = train_rm(root)
    destroy_parallel(keep_process_group=True)
    history = run_grpo(grpo_cfg(DemoPaths(root), rm, root / "run"))
    destroy_parallel(keep_process_group=True)
    if dist.get_rank() == 0:
        out.write_text(json.dumps(history))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
