"""The quickstart's evaluation stages (``eval_before`` / ``eval_after``).

Each exports the stage's latest checkpoint with ``dsm convert dsm-to-hf``, then measures greedy
exact match on the held-out arithmetic problems (the evaluator's HF generator and the rewards
verifier) and runs ``dsm eval`` on a slice of GSM8K test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from dsm_engine.quickstart.stages import Context, read_jsonl, run_dsm
from dsm_engine.quickstart.state import atomic_write_text
from dsm_engine.tasks import arithmetic as ar


def export_hf(ctx: Context, stage: str, checkpoints: Path, dest: Path) -> Path:
    """The latest checkpoint under ``checkpoints`` as a Hugging Face folder with the tokenizer
    (written beside, then renamed into place: a killed export leaves no half folder)."""
    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run_dsm(ctx, stage, ["convert", "dsm-to-hf", "--ckpt", str(checkpoints), "--out", str(tmp)])
    ar.load_tokenizer(ctx.tokenizer).save_pretrained(str(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def heldout_accuracy(ctx: Context, model_dir: Path, out: Path) -> dict[str, Any]:
    """Greedy exact match on the held-out arithmetic problems, in the task's prompt format
    (the one the model was trained on); writes per-problem records to ``out``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from dsm_engine.eval.generation import GenerationConfig, HFGenerator
    from dsm_engine.rewards import grade_batch

    if out.is_file():
        records = read_jsonl(out)
    else:
        rows = read_jsonl(ctx.corpus / "heldout.jsonl")
        prompts = ["<bos>" + ar.PROMPT_TEMPLATE.format(question=r["question"]) for r in rows]
        gen = HFGenerator(model_dir, batch_size=64)
        config = GenerationConfig(max_new_tokens=ctx.budget.heldout_max_new_tokens, temperature=0.0)
        with Progress(
            TextColumn("held-out arithmetic"),
            BarColumn(),
            MofNCompleteColumn(),
            disable=not ctx.progress,
        ) as bar:
            task = bar.add_task("heldout", total=len(prompts))
            outputs = gen.generate(prompts, config, on_batch=lambda n: bar.advance(task, n))
        texts = [o[0] for o in outputs]
        grades = grade_batch(texts, [r["answer"] for r in rows], "auto")
        records = [
            {
                "question": r["question"],
                "gold": r["answer"],
                "output": t,
                "answer": g.pred,
                "correct": g.correct,
            }
            for r, t, g in zip(rows, texts, grades)
        ]
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    n = len(records)
    return {"n": n, "accuracy": 100.0 * sum(r["correct"] for r in records) / n, "samples": str(out)}


def gsm8k_accuracy(ctx: Context, model_dir: Path, out: Path) -> dict[str, Any]:
    """``dsm eval`` (greedy, zero-shot CoT) on the first questions of GSM8K test."""
    from dsm_engine.eval.cli import parse_args, run_eval

    args = parse_args(
        [
            "--model",
            str(model_dir),
            "--bench",
            "gsm8k",
            "--limit",
            str(ctx.budget.gsm8k_limit),
            "--out",
            str(out),
            "--data-dir",
            str(ctx.data_dir / "benchmarks"),
            "--max-new-tokens",
            str(ctx.budget.gsm8k_max_new_tokens),
            "--batch-size",
            "8",
        ]
    )
    result = run_eval(args)["gsm8k"]
    return {"n": int(result["n"]), "accuracy": float(result["pass@1"]), "samples": str(out)}


def _evaluate(ctx: Context, stage: str, run: str) -> dict[str, Any]:
    model = export_hf(ctx, stage, ctx.run_dir(run) / "checkpoints", ctx.out / "models" / run)
    folder = ctx.out / "eval" / run
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "model": str(model),
        "heldout": heldout_accuracy(ctx, model, folder / "heldout_arithmetic.jsonl"),
        "gsm8k": gsm8k_accuracy(ctx, model, folder / "gsm8k"),
    }


def stage_eval_before(ctx: Context) -> dict[str, Any]:
    """Evaluate the pretrained model (before GRPO)."""
    return _evaluate(ctx, "eval_before", "pretrain")


def stage_eval_after(ctx: Context) -> dict[str, Any]:
    """Evaluate the GRPO model."""
    return _evaluate(ctx, "eval_after", "grpo")
