"""Worker of test_scorer_pipeline.py (``torchrun --nproc_per_node 2``, gloo, fp32).

One reward model's ``RewardModelScorer.scores_at`` at PP=2 (one layer per stage), at TP=2 with
sequence parallelism, and at PP=1 (dp=2) from the same weights (the PP=2 checkpoint
resharded). Rows differ in length, outnumber the microbatch size (3 + 3 + 1) and are scored at
ORM positions (last token) and PRM positions (several step ends; one row with none). Every
rank writes what it returned to ``OUT_DIR/rank<r>.json``; the test compares them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

MICRO_BATCH = 3
LENGTHS = (5, 17, 9, 30, 2, 12, 23)


def rows_and_positions() -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(11)
    rows = [torch.randint(3, 256, (n,), generator=g).tolist() for n in LENGTHS]
    orm = [[len(r) - 1] for r in rows]
    prm = [sorted({0, len(r) // 3, len(r) // 2, len(r) - 1}) for r in rows]
    prm[4] = []  # a response without steps
    return rows, orm, prm


def score(ctx_cfg, ckpt: Path, *, save: bool) -> dict[str, list[list[float]]]:
    from dsm_engine.models import initialize_parallel, model_config
    from dsm_engine.models.checkpoint import load_checkpoint, save_checkpoint
    from dsm_engine.reward_models.model import build_reward_model
    from dsm_engine.reward_models.scorer import RewardModelScorer

    ctx = initialize_parallel(ctx_cfg, seed=3)
    model = build_reward_model(model_config("tiny", seq_length=32), ctx, init_weights=save)
    if save:
        if ctx.is_last_stage:
            with torch.no_grad():
                model.score_head.weight.copy_(torch.linspace(-2, 2, 64)[None])
                model.score_head.bias.fill_(0.1)
        save_checkpoint(ckpt, 1, model)
    else:
        load_checkpoint(ckpt, model)
    scorer = RewardModelScorer(model, micro_batch_size=MICRO_BATCH, pad_id=0)
    rows, orm, prm = rows_and_positions()
    return {"orm": scorer.scores_at(rows, orm), "prm": scorer.scores_at(rows, prm)}


def main(out_dir: Path) -> None:
    import torch.distributed as dist

    from dsm_engine.models import ParallelConfig, destroy_parallel

    ckpt = out_dir / "ckpt"
    results = {"pp2": score(ParallelConfig(pp=2), ckpt, save=True)}
    destroy_parallel(keep_process_group=True)
    results["tp2_sp"] = score(ParallelConfig(tp=2, sequence_parallel=True), ckpt, save=False)
    destroy_parallel(keep_process_group=True)
    results["pp1"] = score(ParallelConfig(), ckpt, save=False)
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    destroy_parallel()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
