"""The quickstart's stages, each a function of the run context returning a JSON summary.

Every stage only strings together the project's own components:

- ``data``: generated math pages (``data_pipeline.synthetic_pages``) beside the real Common
  Crawl samples, mined by ``data_pipeline.mine`` and decontaminated by
  ``data_pipeline.decontaminate`` (against the shipped benchmarks);
- ``corpus``: the small tokenizer and arithmetic text of ``tasks.arithmetic``, the mined corpus
  tokenised by ``data_pipeline.tokenize`` into megatron ``.bin``/``.idx``, the RL splits;
- ``pretrain`` / ``grpo``: ``dsm train pretrain`` / ``dsm train grpo`` in a child process
  (``resume=auto``: a killed stage continues from its last checkpoint);
- ``eval_*`` (in ``quickstart.evaluate``): the checkpoint exported with ``dsm convert
  dsm-to-hf``, greedy exact match on the held-out arithmetic problems and ``dsm eval`` on a
  slice of GSM8K test.

The device is the components' choice (CUDA when available, else CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm_engine.config import save_config
from dsm_engine.procs import python_argv
from dsm_engine.quickstart.budget import Budget
from dsm_engine.quickstart.state import QuickstartError, atomic_write_text
from dsm_engine.tasks import arithmetic as ar


@dataclass
class Context:
    """What every stage reads: the run folder, the sizes and the shipped data."""

    out: Path
    budget: Budget
    data_dir: Path  # holds warc/ and benchmarks/
    progress: bool = True

    def log_path(self, stage: str) -> Path:
        path = self.out / "logs" / f"{stage}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # where stages put things (read by later stages and by the report)
    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def corpus(self) -> Path:
        return self.out / "corpus"

    @property
    def tokenizer(self) -> Path:
        return self.corpus / "tokenizer" / "tokenizer.json"

    @property
    def configs(self) -> Path:
        return self.out / "configs"

    def run_dir(self, name: str) -> Path:
        return self.out / name


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- data


def _page_questions(data_dir: Path, n_slots: int, n_contaminated: int, out: Path) -> list[str]:
    """GSM8K-format rows for the generated math pages: train questions, with
    ``n_contaminated`` of the page slots carrying a GSM8K *test* question (what a real crawl
    holds: pages that copy benchmarks). Returns the planted test questions."""
    train = read_jsonl(data_dir / "benchmarks" / "gsm8k" / "train.jsonl")[:n_slots]
    test = read_jsonl(data_dir / "benchmarks" / "gsm8k" / "test.jsonl")
    used = list(range(0, n_slots, 2))  # write_synthetic_warc puts a question on even slots
    step = max(1, len(used) // max(1, n_contaminated))
    planted = []
    for j, slot in enumerate(used[::step][:n_contaminated]):
        train[slot] = test[j]
        planted.append(test[j]["question"])
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in train))
    return planted


def stage_data(ctx: Context) -> dict[str, Any]:
    """Generated + real pages -> mined math corpus -> decontaminated corpus."""
    from dsm_engine.data_pipeline.decontaminate import decontaminate_jsonl
    from dsm_engine.data_pipeline.mine import MineConfig, mine_corpus
    from dsm_engine.data_pipeline.synthetic_pages import manifest_json, write_seed_jsonl
    from dsm_engine.data_pipeline.synthetic_warc import write_synthetic_warc

    b, d = ctx.budget, ctx.data
    real = sorted((ctx.data_dir / "warc").glob("*.warc.gz"))
    if not real:
        raise QuickstartError(f"no WARC samples in {ctx.data_dir / 'warc'} (use --data-dir)")
    inputs = d / "inputs.json"
    if not inputs.is_file():  # generated once; a resumed run mines the very same files
        warcs = d / "warcs"
        warcs.mkdir(parents=True, exist_ok=True)
        for path in real:
            link = warcs / path.name
            if not link.exists():
                os.symlink(path, link)
        n_mixed = 8
        source = d / "page_questions.jsonl"
        planted = _page_questions(
            ctx.data_dir, b.math_pages + n_mixed, b.contaminated_pages, source
        )
        pages = write_synthetic_warc(
            warcs / "synthetic.warc.gz",
            n_math=b.math_pages,
            n_nonmath=b.nonmath_pages,
            n_mixed_math=n_mixed,
            seed=0,
            gsm8k_path=source,
        )
        atomic_write_text(d / "synthetic_manifest.json", manifest_json(pages))
        write_seed_jsonl(
            d / "seed.jsonl",
            n=b.seed_docs,
            gsm8k_path=ctx.data_dir / "benchmarks/gsm8k/train.jsonl",
        )
        summary = {
            "real_warcs": [p.name for p in real],
            "synthetic_pages": len(pages),
            "synthetic_math_pages": sum(p.kind == "math" for p in pages),
            "planted_benchmark_questions": planted,
            "seed_docs": b.seed_docs,
        }
        atomic_write_text(inputs, json.dumps(summary, indent=1) + "\n")
    summary = json.loads(inputs.read_text())

    cfg = MineConfig(
        warc=str(d / "warcs" / "*.warc.gz"),
        seed=str(d / "seed.jsonl"),
        out=str(d / "mine"),
        iterations=b.mine_iterations,
        auto_annotate=0.5,
    )
    cfg.classifier.epoch = b.classifier_epoch  # the paper's 3 epochs learn nothing from ~100 seeds
    cfg.classifier.bucket = b.classifier_bucket
    mined = mine_corpus(cfg, progress=ctx.progress)
    if not mined.funnel.get("kept"):
        raise QuickstartError(
            f"the math classifier kept no page; see {d / 'mine'}/iter_*/stats.json"
        )
    with _spinner(ctx, "decontaminating against the shipped benchmarks"):
        counters = decontaminate_jsonl(
            mined.mined, d / "decontaminated", ctx.data_dir / "benchmarks"
        )
    removed = [
        r for p in sorted((d / "decontaminated" / "removed").glob("*.jsonl")) for r in read_jsonl(p)
    ]
    return {
        "inputs": summary,
        "funnel": {k: v for k, v in mined.funnel.items() if k != "iterations"},
        "iterations": mined.funnel.get("iterations", []),
        "decontamination": {k: int(v) for k, v in counters.items()},
        "removed_examples": [
            {
                "url": r.get("url", ""),
                "benchmarks": r.get("benchmarks"),
                "text": r.get("text", "")[:160],
            }
            for r in removed[:5]
        ],
        "mine_config": str(d / "mine" / "config.yaml"),
    }


class _spinner:
    """A rich spinner with elapsed time for a step that has no progress bar of its own."""

    def __init__(self, ctx: Context, text: str) -> None:
        self.ctx, self.text, self.bar = ctx, text, None

    def __enter__(self) -> _spinner:
        if self.ctx.progress:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(SpinnerColumn(), TextColumn(self.text), TimeElapsedColumn())
            self.bar.add_task(self.text, total=None)
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# ----------------------------------------------------------------------------- corpus


def stage_corpus(ctx: Context) -> dict[str, Any]:
    """Tokenizer, tokenised corpora (arithmetic text + mined pages) and the RL problem splits."""
    from dsm_engine.data_pipeline.jsonl_io import iter_texts, jsonl_files
    from dsm_engine.data_pipeline.tokenize import tokenize_jsonl

    b, c = ctx.budget, ctx.corpus
    documents = ctx.data / "decontaminated" / "documents"
    mined_texts = list(iter_texts(jsonl_files(documents), "text"))
    arith = ar.pretraining_texts(b.arithmetic_docs, seed=0)
    with _spinner(ctx, "training the tokenizer, tokenising arithmetic text"):
        tok = ar.build_tokenizer(
            arith[:5000] + mined_texts, ctx.tokenizer, vocab_size=b.tokenizer_vocab
        )
        _, eos = ar.write_pretraining_corpus(arith, tok, c / "arithmetic")
    stats = tokenize_jsonl(documents, tok, c / "mined", progress=ctx.progress)
    if stats.eod_id != eos:
        raise QuickstartError(f"end-of-document ids differ: arithmetic {eos}, mined {stats.eod_id}")
    ar.write_jsonl(ar.make_problems("train", b.train_problems, seed=0), c / "train.jsonl")
    ar.write_jsonl(ar.make_problems("heldout", b.heldout_problems, seed=1), c / "heldout.jsonl")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    index = IndexedDataset(str(c / "arithmetic"))  # held: its arrays view the index's mmap
    arith_tokens = int(index.sequence_lengths.sum())
    del index
    return {
        "tokenizer": str(tok),
        "vocab_size": stats.vocab_size,
        "eos_id": eos,
        "mined_documents": stats.documents,
        "mined_tokens": stats.tokens,
        "arithmetic_documents": len(arith),
        "arithmetic_tokens": arith_tokens,
        "train_problems": b.train_problems,
        "heldout_problems": b.heldout_problems,
    }


# ----------------------------------------------------------------------------- training


def run_dsm(ctx: Context, stage: str, argv: list[str]) -> None:
    """``python -P -m dsm_engine.cli ARGV`` in a child process; its progress bar shows on our
    stdout, its stderr goes to ``logs/<stage>.log``. Ctrl-C is passed on and waited for."""
    log = ctx.log_path(stage)
    cmd = python_argv("-m", "dsm_engine.cli", *argv)
    with open(log, "a") as err:
        err.write(f"$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(cmd, stderr=err)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise QuickstartError(
            f"stage {stage}: `dsm {' '.join(argv[:2])}` exited {rc}; {log}:\n{tail}"
        )


def _corpus_info(ctx: Context) -> dict[str, Any]:
    from dsm_engine.quickstart.state import RunState

    done = RunState(ctx.out).done("corpus")
    if done is None:
        raise QuickstartError("the corpus stage has not finished")
    return done["info"]


def pretrain_config(ctx: Context):
    """The resolved ``dsm train pretrain`` config of this run."""
    from dsm_engine.config import from_dict
    from dsm_engine.trainers.config import PretrainConfig

    b, info = ctx.budget, _corpus_info(ctx)
    steps = b.pretrain_steps
    return from_dict(
        PretrainConfig,
        {
            "run_dir": str(ctx.run_dir("pretrain")),
            "resume": "auto",
            "model": dict(b.model),
            "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
            "schedule": {
                "name": "constant",
                "lr": b.pretrain_lr,
                "warmup_steps": min(30, steps // 5),
            },
            "data": {
                "paths": [str(ctx.corpus / "arithmetic"), str(ctx.corpus / "mined")],
                "weights": [1.0 - b.mined_weight, b.mined_weight],
                "eod_token_id": info["eos_id"],
                "seed": 1,
            },
            "train": {
                "steps": steps,
                "micro_batch_size": b.pretrain_batch,
                "global_batch_size": b.pretrain_batch,
            },
            "checkpoint": {"every": max(10, steps // 4)},
            "logging": {"tensorboard": False, "progress": ctx.progress},
        },
    )


def stage_pretrain(ctx: Context) -> dict[str, Any]:
    """Pretrain the tiny model on arithmetic text mixed with the mined corpus."""
    cfg = pretrain_config(ctx)
    path = ctx.configs / "pretrain.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)
    run_dsm(ctx, "pretrain", ["train", "pretrain", "--config", str(path)])
    rows = read_jsonl(Path(cfg.run_dir) / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    return {
        "config": str(path),
        "steps": len(losses),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def grpo_config(ctx: Context):
    """The resolved ``dsm train grpo`` config of this run."""
    from dsm_engine.config import from_dict
    from dsm_engine.grpo.config import GRPOConfig

    b = ctx.budget
    return from_dict(
        GRPOConfig,
        {
            "run_dir": str(ctx.run_dir("grpo")),
            "resume": "auto",
            "model": dict(b.model),
            "optim": {"weight_decay": 0.0, "clip_grad": 1.0},
            "schedule": {"name": "constant", "lr": b.grpo_lr, "warmup_steps": 0},
            "checkpoint": {
                "every": max(5, b.grpo_steps // 3),
                "load": str(ctx.run_dir("pretrain") / "checkpoints"),
            },
            "logging": {"tensorboard": False, "progress": ctx.progress},
            "grpo": {
                "steps": b.grpo_steps,
                "prompts_per_step": b.grpo_prompts_per_step,
                "group_size": b.grpo_group_size,
                "mu": 1,
                "micro_batch_size": b.grpo_prompts_per_step * b.grpo_group_size,
                "beta": 0.04,
            },
            "rollout": {
                "backend": "hf",
                "temperature": 1.0,
                "max_new_tokens": b.grpo_max_new_tokens,
            },
            "data": {
                "path": str(ctx.corpus / "train.jsonl"),
                "tokenizer": str(ctx.tokenizer),
                "template": ar.PROMPT_TEMPLATE,
                "max_prompt_tokens": b.model["seq_length"],
            },
            "reward": {"name": "verifier", "kind": "auto"},
            "eval": {
                "path": str(ctx.corpus / "heldout.jsonl"),
                "every": b.grpo_eval_every,
                "num_prompts": b.grpo_eval_prompts,
                "max_new_tokens": b.heldout_max_new_tokens,
            },
        },
    )


def stage_grpo(ctx: Context) -> dict[str, Any]:
    """GRPO from the pretrained checkpoint on arithmetic word problems, verifier reward."""
    cfg = grpo_config(ctx)
    path = ctx.configs / "grpo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)
    run_dsm(ctx, "grpo", ["train", "grpo", "--config", str(path)])
    rows = [r for r in read_jsonl(Path(cfg.run_dir) / "metrics.jsonl") if "reward_mean" in r]
    return {
        "config": str(path),
        "steps": len(rows),
        "first_reward": rows[0]["reward_mean"],
        "last_reward": rows[-1]["reward_mean"],
    }
