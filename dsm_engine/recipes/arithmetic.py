"""The CPU proof that GRPO learns: pretrain a tiny model on arithmetic text, then GRPO it.

Shared by ``examples/grpo_arithmetic.py`` and the slow test ``tests/grpo/test_learns.py``:

1. ``prepare``: the tokenizer, the pretraining corpus (megatron ``.bin``/``.idx``) and the
   GRPO train / held-out JSON Lines (disjoint splits of ``dsm_engine.tasks.arithmetic``);
2. ``pretrain``: ``dsm train pretrain`` on that corpus (a moderate accuracy, leaving room);
3. ``grpo_config``: ``dsm train grpo`` from the pretrained checkpoint with the verifier reward,
   logging held-out greedy exact-match accuracy as ``eval_accuracy``.

Process supervision (``examples/prm_arithmetic.py``, ``tests/reward_models/test_prm_proof.py``):

4. ``label_prm``: ``dsm rm label --kind prm`` Monte-Carlo step labels on policy samples;
5. ``train_prm``: ``dsm train rm --kind prm`` from the policy, held-out step accuracy / AUC;
6. ``prm_grpo_config``: GRPO with per-token process advantages from the PRM's step scores.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def pretrain(
    paths: DemoPaths,
    eos: int,
    *,
    steps: int = 300,
    progress: bool = True,
    model: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """Pretrain the tiny model (``model``: its sections, default ``TINY_MODEL``) on the corpus
    (``overrides``: top-level config sections, merged); returns the checkpoint root."""
    from dsm_engine.config import from_dict
    from dsm_engine.trainers.config import PretrainConfig
    from dsm_engine.trainers.pretrain import run_pretrain

    sections: dict[str, Any] = {
        "run_dir": str(paths.pretrain_run),
        "overwrite": True,
        "model": dict(model or TINY_MODEL),
        "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
        "schedule": {"name": "constant", "lr": 3e-3, "warmup_steps": 30},
        "data": {"paths": [str(paths.corpus)], "eod_token_id": eos, "seed": 1},
        "train": {"steps": steps, "micro_batch_size": 32, "global_batch_size": 32},
        "checkpoint": {"every": steps},
        "logging": {"tensorboard": False, "progress": progress},
    }
    _merge(sections, overrides)
    run_pretrain(from_dict(PretrainConfig, sections))
    return paths.pretrain_run / "checkpoints"


def _merge(sections: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Merge ``overrides`` into ``sections`` in place: dict sections key by key."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value


def grpo_config(paths: DemoPaths, init: Path, **overrides: Any):
    """The GRPO run config of the demo (``overrides``: top-level sections, merged)."""
    from dsm_engine.config import from_dict
    from dsm_engine.grpo.config import GRPOConfig

    sections: dict[str, Any] = {
        "run_dir": str(paths.grpo_run),
        "overwrite": True,
        "model": dict(TINY_MODEL),
        "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
        # Cosine decay (5e-4 -> 5e-5) rather than a constant rate: at a constant rate the policy
        # kept moving after it had learned, and where the run ended was luck (held-out curve
        # 0.66 ... 0.98, 0.955, 0.82; a CI machine's run ended 0.615 -> 0.67). Decayed, the
        # same pretrained policy ends 0.66 -> 1.0, 1.0 and corpus seed 2 ends 0.815 -> 0.945.
        "schedule": {"name": "cosine", "lr": 5e-4, "warmup_steps": 0, "min_lr_ratio": 0.1},
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
    _merge(sections, overrides)
    return from_dict(GRPOConfig, sections)


# Steps of the task's one-line solutions (" 3 + 4 = 7. The answer is \\boxed{7}.") end at ".":
# the equation, then the boxed answer.
STEP_DELIMITER = "."


def label_prm(
    paths: DemoPaths,
    policy: Path,
    out: Path,
    *,
    split: str = "train",
    num_prompts: int = 400,
    samples: int = 4,
    completions: int = 1,
    temperature: float = 1.0,
    seed: int = 1,
) -> Path:
    """``dsm rm label --kind prm`` on the first ``num_prompts`` problems of ``split``
    (``train`` or ``heldout``): ``samples`` responses per problem, each non-final step labelled
    good when one of ``completions`` rollouts from it reaches the answer. Returns ``out``."""
    from dsm_engine.commands.rm_label import main as label_main

    prompts = {"train": paths.train, "heldout": paths.heldout}.get(split)
    if prompts is None:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    flags = {
        "kind": "prm",
        "policy": policy,
        "prompts": prompts,
        "tokenizer": paths.tokenizer,
        "template": ar.PROMPT_TEMPLATE,
        "out": out,
        "num-prompts": num_prompts,
        "samples": samples,
        "completions": completions,
        "delimiter": STEP_DELIMITER,
        "max-new-tokens": 32,
        "answer-kind": "auto",
        "temperature": temperature,
        "seed": seed,
    }
    argv = [arg for name, value in flags.items() for arg in (f"--{name}", str(value))]
    if label_main(argv) != 0:
        raise RuntimeError(f"dsm rm label failed on {prompts}")
    return out


def prm_config(
    train_labels: Path,
    eval_labels: Path,
    policy: Path,
    run_dir: Path,
    *,
    steps: int = 400,
    lr: float = 1e-3,
    seed: int = 1234,
    progress: bool = True,
):
    """The ``dsm train rm --kind prm`` config of the demo (what
    ``configs/rm/tiny-arithmetic-prm.yaml`` holds), initialised from ``policy``."""
    from dsm_engine.config import from_dict
    from dsm_engine.trainers.reward_model import RewardModelConfig

    return from_dict(
        RewardModelConfig,
        {
            "run_dir": str(run_dir),
            "overwrite": True,
            "kind": "prm",
            "model": dict(TINY_MODEL),
            "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
            "schedule": {"name": "constant", "lr": lr, "warmup_steps": 10},
            "train": {
                "steps": steps,
                "micro_batch_size": 32,
                "global_batch_size": 32,
                "seed": seed,
            },
            "data": {"train_path": str(train_labels), "eval_path": str(eval_labels)},
            "eval": {"every": 50, "micro_batch_size": 64},
            "checkpoint": {"every": steps, "load": str(policy)},
            "logging": {"tensorboard": False, "progress": progress},
        },
    )


def train_prm(
    train_labels: Path,
    eval_labels: Path,
    policy: Path,
    run_dir: Path,
    **kwargs: Any,
) -> tuple[Path, dict[str, float]]:
    """Train the PRM (``prm_config``'s keyword arguments); returns its checkpoint root and the
    final metrics (``eval_auc``, ``eval_acc``: held-out step labels)."""
    from dsm_engine.trainers.reward_model import run_reward_model

    final = run_reward_model(prm_config(train_labels, eval_labels, policy, run_dir, **kwargs))
    return Path(run_dir) / "checkpoints", final


def prm_grpo_config(paths: DemoPaths, init: Path, prms: Path | Sequence[Path], **overrides: Any):
    """The process-supervised GRPO run of the demo: ``grpo_config`` with the advantages from
    the PRM at ``prms`` (``reward.supervision: prm``), or from the mean of several PRMs when
    ``prms`` names more than one (the first as ``reward.model_path``, the others as
    ``reward.ensemble``); the verifier only logs accuracy.

    Same steps, peak learning rate and temperature as the outcome run; two changes, both
    because the PRM is a flawed judge. The tiny PRM learns which operation a word problem
    needs (right vs wrong operation: AUC ~0.9) but not the arithmetic or the operands (right
    operation, wrong result: AUC ~0.5, even with balanced perturbed-result examples added): it
    scores " 2 * 2 = 6." about like " 2 * 2 = 4.", and each PRM has its own proxies (one
    prefers results one too large on one template). So:

    * β = 1.0 instead of 0.04: the optimum of the KL-regularised objective is
      π_ref · exp(A / β), so the operation, where the PRM's advantage gap is large, moves while
      the digits the reference policy already gets right mostly stay put. β 0.04 or 0.2
      collapse held-out accuracy (0.66 -> 0.0-0.29) while the PRM score climbs;
    * a cosine learning-rate decay (5e-4 -> 5e-5) instead of a constant rate: at a constant
      rate the greedy policy keeps swinging between evaluations as it chases the PRM's proxies
      (e.g. 0.95, 0.875, 0.905, 0.715 over the last four), and where a run ends is luck.

    Measured (held-out greedy accuracy on 200 problems, start 0.66; the evaluations at steps
    60 / 70 / 80 / 90) with the PRMs of seeds 1-3 of ``label_and_train_prm``. Constant rate:
    best of the last two 0.78 / 0.84 / 0.71, with swings of up to 0.2; the seed-3 PRM's
    off-by-one preference drifted the policy's arithmetic. Cosine: seed 1 0.81 / 0.815 /
    0.875 / 0.89, seed 2 0.805 / 0.83 / 0.905 / 0.89, seed 3 0.825 / 0.80 / 0.825 / 0.825.
    An ensemble of the three (same labels, training seeds 1-3; ``reward.ensemble``), cosine:
    0.855 / 0.85 / 0.895 / 0.925 (constant rate: 0.81 / 0.84 / 0.685 / 0.58). A policy
    pretrained by the same recipe after a change of floating-point rounding (start 0.655) shows
    why one PRM is not enough: with its seed-1 PRM, cosine, 0.625 / 0.695 / 0.68 / 0.705; with
    the ensemble (as in the test suite), 0.895 / 0.855 / 0.87 / 0.885.
    """
    prms = [prms] if isinstance(prms, (str, Path)) else list(prms)
    if not prms:
        raise ValueError("prm_grpo_config needs at least one PRM checkpoint")
    sections: dict[str, Any] = {
        "reward": {
            "supervision": "prm",
            "model_path": str(prms[0]),
            "ensemble": [str(p) for p in prms[1:]],
            "delimiter": STEP_DELIMITER,
        },
        "grpo": {"beta": 1.0},
        "schedule": {"name": "cosine", "min_lr_ratio": 0.1},
    }
    _merge(sections, overrides)
    return grpo_config(paths, init, **sections)


def heldout_step_auc(paths: DemoPaths, prms: Sequence[Path], labels: Path) -> tuple[float, float]:
    """``(AUC, accuracy at 0.5)`` of the mean score of ``prms`` on the step labels in
    ``labels`` (what process-supervised GRPO with that ensemble is rewarded by)."""
    import json

    from dsm_engine.models.parallel import parallel_session
    from dsm_engine.reward_models.metrics import accuracy, auc
    from dsm_engine.reward_models.scorer import MeanScorer, PRMReward, load_reward_fn
    from dsm_engine.text_codec import TextCodec

    rows = [json.loads(line) for line in Path(labels).read_text().splitlines()]
    with parallel_session() as ctx:
        members = [
            load_reward_fn("prm", str(p), str(paths.tokenizer), ctx=ctx).scorer for p in prms
        ]
        codec = TextCodec(str(paths.tokenizer))
        prm = PRMReward(MeanScorer(members), codec, delimiter=STEP_DELIMITER)
        scores, _ = prm.step_scores(
            [r["prompt_ids"] for r in rows],
            [r["response_ids"] for r in rows],
            [r["step_ends"] for r in rows],
        )
    flat = [v for row in scores for v in row]
    targets = [y for r in rows for y in r["step_labels"]]
    return auc(flat, targets), accuracy(flat, targets, threshold=0.5)


def label_and_train_prm(
    paths: DemoPaths,
    policy: Path,
    root: Path,
    *,
    label_prompts: int = 600,
    heldout_prompts: int = 100,
    samples: int = 4,
    completions: int = 1,
    temperatures: Sequence[float] = (1.0, 1.5),
    rm_steps: int = 400,
    lr: float = 1e-3,
    ensemble: int = 1,
    seed: int = 1,
    progress: bool = True,
) -> tuple[list[Path], dict[str, float]]:
    """The PRM proof's stages under ``root``: Monte-Carlo step labels of ``policy``'s samples
    on the train split at each of ``temperatures`` (to train) and on the held-out split at the
    first temperature (to evaluate), then ``ensemble`` PRMs on those labels (training seeds
    ``seed``, ``seed + 1``, ...: head initialisation and batch order).

    The hotter samples (1.5) are mostly broken solutions, labelled bad by their completions: a
    PRM that never saw them scores some of them high, and GRPO finds them (measured: held-out
    accuracy fell to 0 on answers like " 4. The answer is \\boxed{10}.").

    ``completions=1`` by default: a step's label is then an unbiased one-sample estimate of the
    chance that the policy finishes it correctly, the same expectation as the final step's
    verdict, so the PRM's scores at the two steps of a solution are comparable (with K > 1 the
    intermediate labels are optimistic). Returns the PRM checkpoint roots and metrics: the
    ensemble's held-out step ``eval_auc`` / ``eval_acc``, the weakest member's
    ``member_auc_min``, ``heldout_good_step_share`` (the positive share of the held-out step
    labels) and ``heldout_step_labels``.
    """
    import json

    if not temperatures:
        raise ValueError("temperatures must name at least one sampling temperature")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1 PRM, got {ensemble}")
    root = Path(root)
    kw = {"samples": samples, "completions": completions}
    parts = [
        label_prm(
            paths,
            policy,
            root / f"prm_train_t{t:g}.jsonl",
            num_prompts=label_prompts,
            temperature=t,
            seed=seed + 17 * i,
            **kw,
        )
        for i, t in enumerate(temperatures)
    ]
    train = root / "prm_train.jsonl"
    train.write_text("".join(p.read_text() for p in parts))
    held = label_prm(
        paths,
        policy,
        root / "prm_heldout.jsonl",
        split="heldout",
        num_prompts=heldout_prompts,
        temperature=temperatures[0],
        seed=seed + 1000,
        **kw,
    )
    ckpts, member_aucs = [], []
    for k in range(ensemble):
        run_dir = root / ("prm" if k == 0 else f"prm_{k}")
        ckpt, final = train_prm(
            train, held, policy, run_dir, steps=rm_steps, lr=lr, seed=seed + k, progress=progress
        )
        ckpts.append(ckpt)
        member_aucs.append(final["eval_auc"])
    ens_auc, ens_acc = heldout_step_auc(paths, ckpts, held)
    labels = [y for line in held.read_text().splitlines() for y in json.loads(line)["step_labels"]]
    return ckpts, {
        "eval_auc": ens_auc,
        "eval_acc": ens_acc,
        "member_auc_min": min(member_aucs),
        "heldout_good_step_share": sum(labels) / max(len(labels), 1),
        "heldout_step_labels": float(len(labels)),
    }
