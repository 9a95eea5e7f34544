"""``dsm train rm``: learns a PRM on labelled rows, checkpoints its replay buffer, and a
continued run (the next RL iteration) mixes exactly 10% historical rows into each batch."""

from __future__ import annotations

import json
import random

import torch

from dsm_engine.trainers.reward_model import main


def _write(path, n, seed, kind):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            p = [rng.randrange(3, 256) for _ in range(rng.randint(2, 5))]
            r = [rng.randrange(3, 256) for _ in range(rng.randint(3, 9))]
            if kind == "orm":
                row = {"prompt_ids": p, "response_ids": r, "label": float(r[-1] % 2 == 0)}
            else:
                ends = sorted({rng.randrange(len(r)) for _ in range(2)} | {len(r) - 1})
                # a step is good when its end token is even: learnable from the token itself
                row = {
                    "prompt_ids": p,
                    "response_ids": r,
                    "step_ends": ends,
                    "step_labels": [float(r[e] % 2 == 0) for e in ends],
                }
            f.write(json.dumps(row) + "\n")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


COMMON = [
    "model.seq_length=16",
    "train.micro_batch_size=10",
    "train.global_batch_size=20",
    "logging.progress=false",
    "logging.tensorboard=false",
    "schedule.lr=3e-3",
]


def test_prm_learns_and_next_iteration_replays_ten_percent(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(first, 240, 0, "prm")
    _write(second, 60, 1, "prm")
    run1 = tmp_path / "rm1"
    rc = main(
        [
            "--kind",
            "prm",
            f"run_dir={run1}",
            f"data.train_path={first}",
            "train.steps=60",
            "checkpoint.every=30",
            *COMMON,
        ]
    )
    assert rc == 0
    rows = _metrics(run1)
    assert rows[-1]["eval_auc"] > 0.8 and rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["historical_frac"] == 0.0 for r in rows)  # nothing to replay yet
    extra = torch.load(
        run1 / "checkpoints" / "step_0000060" / "extra" / "rank_00000.pt", weights_only=False
    )
    assert extra["merged"] and len(extra["replay"]["items"]) == 216
    assert extra["replay"]["seen"] == 216  # the training split (90%) joined the buffer

    run2 = tmp_path / "rm2"
    rc = main(
        [
            "--kind",
            "prm",
            f"run_dir={run2}",
            f"data.train_path={second}",
            f"checkpoint.load={run1 / 'checkpoints'}",
            "train.steps=4",
            *COMMON,
        ]
    )
    assert rc == 0
    assert [r["historical_frac"] for r in _metrics(run2)] == [0.1] * 4  # 2 of 20, exactly


def test_resume_continues_from_checkpoint(tmp_path):
    data = tmp_path / "orm.jsonl"
    _write(data, 60, 2, "orm")
    run = tmp_path / "rm"
    args = [
        "--kind",
        "orm",
        f"run_dir={run}",
        f"data.train_path={data}",
        "checkpoint.every=2",
        *COMMON,
    ]
    assert main([*args, "train.steps=2"]) == 0
    assert main([*args, "train.steps=4", "resume=auto"]) == 0
    steps = [r["step"] for r in _metrics(run)]
    assert steps == [1, 2, 3, 4]
    assert main(["--kind", "orm", f"run_dir={tmp_path / 'x'}", "data.train_path=/nonexistent"]) == 2
