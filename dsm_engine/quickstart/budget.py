"""Size presets of ``dsm quickstart --minutes N``: how much work each stage does.

Two presets are measured on two CPU cores: ``3`` minutes (the CI run: every stage, small sizes)
and ``15`` (the default: sizes at which GRPO's gain on held-out arithmetic is visible). Other
budgets interpolate the step and problem counts linearly in minutes between (and beyond) them;
data sizes and the model come from the nearer preset, so one budget always means one run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dsm_engine.config import ConfigError


@dataclass
class Budget:
    """Every size the quickstart stages read (also recorded in the report)."""

    minutes: float
    # data: generated pages beside the real WARC samples, and the mining loop
    math_pages: int
    nonmath_pages: int
    contaminated_pages: int  # math pages that copy a GSM8K *test* question (decontamination bait)
    seed_docs: int
    mine_iterations: int
    classifier_epoch: int
    classifier_bucket: int
    # corpus
    tokenizer_vocab: int
    arithmetic_docs: int
    mined_weight: float  # share of pretraining samples drawn from the mined corpus
    # model and pretraining
    model: dict[str, Any] = field(default_factory=dict)
    pretrain_steps: int = 100
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    # GRPO
    grpo_steps: int = 10
    grpo_prompts_per_step: int = 8
    grpo_group_size: int = 8
    grpo_max_new_tokens: int = 32
    grpo_lr: float = 5e-4
    grpo_eval_every: int = 0  # held-out accuracy inside the GRPO run every N steps (0: off)
    grpo_eval_prompts: int = 32
    train_problems: int = 2000
    # evaluation before / after GRPO
    heldout_problems: int = 100
    heldout_max_new_tokens: int = 32
    gsm8k_limit: int = 8
    gsm8k_max_new_tokens: int = 32


_MODEL = {
    "num_layers": 3,
    "hidden_size": 96,
    "num_attention_heads": 4,
    "ffn_hidden_size": 256,
    "vocab_size": 512,
    "seq_length": 64,
}

PRESETS: dict[int, Budget] = {
    3: Budget(
        minutes=3,
        math_pages=30,
        nonmath_pages=150,  # negatives are random pool pages: the pool must be mostly non-math
        contaminated_pages=4,
        seed_docs=120,
        mine_iterations=2,
        classifier_epoch=25,
        classifier_bucket=20_000,
        tokenizer_vocab=512,
        arithmetic_docs=12_000,
        mined_weight=0.1,
        model=dict(_MODEL),
        pretrain_steps=300,
        pretrain_batch=32,
        grpo_steps=10,
        grpo_prompts_per_step=8,
        grpo_group_size=8,
        grpo_eval_every=0,
        heldout_problems=48,
        gsm8k_limit=4,
    ),
    15: Budget(
        minutes=15,
        math_pages=60,
        nonmath_pages=150,
        contaminated_pages=6,
        seed_docs=120,
        mine_iterations=4,
        classifier_epoch=25,
        classifier_bucket=20_000,
        tokenizer_vocab=512,
        arithmetic_docs=30_000,
        mined_weight=0.1,
        model=dict(_MODEL),
        pretrain_steps=500,
        pretrain_batch=32,
        grpo_steps=60,
        grpo_prompts_per_step=16,
        grpo_group_size=8,
        grpo_eval_every=20,
        grpo_eval_prompts=100,
        heldout_problems=200,
        gsm8k_limit=20,
    ),
}

# fields that scale with the budget (rounded, at least 1)
_SCALED = ("pretrain_steps", "grpo_steps", "heldout_problems", "gsm8k_limit", "arithmetic_docs")


def budget_for(minutes: float) -> Budget:
    """The sizes for a ``minutes`` budget on two CPU cores (see the module docstring)."""
    if not minutes > 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    lo, hi = PRESETS[3], PRESETS[15]
    base = lo if minutes <= 9 else hi
    out = dataclasses.replace(base, minutes=float(minutes), model=dict(base.model))
    for name in _SCALED:
        a, b = getattr(lo, name), getattr(hi, name)
        value = a + (b - a) * (minutes - lo.minutes) / (hi.minutes - lo.minutes)
        if minutes < lo.minutes:  # below the smallest preset: shrink in proportion
            value = a * minutes / lo.minutes
        setattr(out, name, max(1, round(value)))
    if out.grpo_eval_every > out.grpo_steps:
        out.grpo_eval_every = 0
    return out
