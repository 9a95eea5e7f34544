"""The CPU proof that GRPO learns: pretrain a tiny model on arithmetic text, then GRPO it.

Shared by ``examples/grpo_arithmetic.py`` and the slow test ``tests/grpo/test_learns.py``:

1. ``prepare``: the tokenizer, the pretraining corpus (megatron ``.bin``/``.idx``) and the
   GRPO train / held-out JSON Lines (disjoint splits of ``dsm_engine.tasks.arithmetic``);
2. ``pretrain``: ``dsm train pretrain`` on that corpus (a moderate accuracy, leaving room);
3. ``grpo``: ``dsm train grpo`` from the pretrained checkpoint with the verifier reward,
   logging held-out greedy exact-match accuracy as ``eval_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm_engine.tasks import arithmetic as ar

# A ~0.4M-parameter Llama: big enough to learn one-digit arithmetic in a few CPU minutes.
TINY_MODEL: dict[str, Any] = {
    "num_layers": 3,
    "hidden_size": 96,
    "num_attention_heads": 4,
    "ffn_hidden_size": 256,
    "vocab_size": 384,
    "seq_length": 64,
    "max_position_embeddings": 128,  # prompt + response of GRPO exceed the pretraining length
}


@dataclass
class DemoPaths:
    """Files of one demo folder."""

    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer" / "tokenizer.json"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus" / "arithmetic"

    @property
    def train(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def heldout(self) -> Path:
        return self.root / "heldout.jsonl"

    @property
    def pretrain_run(self) -> Path:
        return self.root / "pretrain"

    @property
    def grpo_run(self) -> Path:
        return self.root / "grpo"


def prepare(root: str | Path, *, num_docs: int = 30_000, seed: int = 0) -> tuple[DemoPaths, int]:
    """Write tokenizer, corpus and the RL splits under ``root``; returns paths and the eos id."""
    paths = DemoPaths(Path(root))
    docs = ar.pretraining_texts(num_docs, seed=seed)
    ar.build_tokenizer(docs[:5000], paths.tokenizer, vocab_size=TINY_MODEL["vocab_size"])
    _, eos = ar.write_pretraining_corpus(docs, paths.tokenizer, paths.corpus)
    ar.write_jsonl(ar.make_problems("train", 2000, seed=seed), paths.train)
    ar.write_jsonl(ar.make_problems("heldout", 400, seed=seed + 1), paths.heldout)
    return paths, eos


def pretrain(paths: DemoPaths, eos: int, *, steps: int = 300, progress: bool = True) -> Path:
    """Pretrain the tiny model on the corpus; returns the checkpoint root."""
    from dsm_engine.config import from_dict
    from dsm_engine.trainers.config import PretrainConfig
    from dsm_engine.trainers.pretrain import run_pretrain

    cfg = from_dict(
        PretrainConfig,
        {
            "run_dir": str(paths.pretrain_run),
            "overwrite": True,
            "model": dict(TINY_MODEL),
            "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
            "schedule": {"name": "constant", "lr": 3e-3, "warmup_steps": 30},
            "data": {"paths": [str(paths.corpus)], "eod_token_id": eos, "seed": 1},
            "train": {"steps": steps, "micro_batch_size": 32, "global_batch_size": 32},
            "checkpoint": {"every": steps},
            "logging": {"tensorboard": False, "progress": progress},
        },
    )
    run_pretrain(cfg)
    return paths.pretrain_run / "checkpoints"


def grpo_config(paths: DemoPaths, init: Path, **overrides: Any):
    """The GRPO run config of the demo (``overrides``: top-level sections, merged)."""
    from dsm_engine.config import from_dict
    from dsm_engine.grpo.config import GRPOConfig

    sections: dict[str, Any] = {
        "run_dir": str(paths.grpo_run),
        "overwrite": True,
        "model": dict(TINY_MODEL),
        "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
        "schedule": {"name": "constant", "lr": 5e-4, "warmup_steps": 0},
        "checkpoint": {"every": 1000, "load": str(init)},
        "logging": {"tensorboard": False, "progress": True},
        "grpo": {
            "steps": 90,
            "prompts_per_step": 16,
            "group_size": 8,
            "mu": 1,
            "micro_batch_size": 128,
            "beta": 0.04,
        },
        "rollout": {"backend": "hf", "temperature": 1.0, "max_new_tokens": 32},
        "data": {
            "path": str(paths.train),
            "tokenizer": str(paths.tokenizer),
            "template": ar.PROMPT_TEMPLATE,
            "max_prompt_tokens": 64,
        },
        "reward": {"name": "verifier", "kind": "auto"},
        "eval": {"path": str(paths.heldout), "every": 10, "num_prompts": 200, "max_new_tokens": 32},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return from_dict(GRPOConfig, sections)
