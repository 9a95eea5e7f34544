"""``dsm eval``: generate on the benchmarks, grade, and write samples + a summary table.

Outputs under ``--out``: ``samples_<bench>.jsonl`` (one record per question, appended as
questions finish, so a killed run resumes where it stopped), ``settings.json``,
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from dsm_engine.eval.benchmarks import BENCHMARKS, Example, load_benchmark
from dsm_engine.eval.formats import (
    FORMATS,
    Generated,
    benches_for,
    build_format_prompt,
    generate_format,
)
from dsm_engine.eval.generation import (
    GenerationConfig,
    Generator,
    load_generator,
    resolve_model_dir,
)
from dsm_engine.eval.report import (
    append_records,
    read_records,
    render_markdown,
    repair_tail,
    write_summary,
)
from dsm_engine.eval.scoring import majority_vote, summarize
from dsm_engine.models.hf_tokenizer import has_tokenizer, save_hf_tokenizer
from dsm_engine.rewards.checker import EquivalenceConfig, SymbolicChecker
from dsm_engine.rewards.verifier import grade_batch
from dsm_engine.sandbox import Sandbox

__all__ = ["main", "parse_args", "run_eval"]

# settings that change results: a resumed run must use the same ones
_RESULT_SETTINGS = (
    "model",
    "shots",
    "samples",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "format",
    "max_rounds",
)
_SETTING_DEFAULTS = {"format": "cot"}  # runs written before --format existed


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="dsm eval", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face folder or dsm checkpoint")
    ap.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json or Hugging Face folder (default: the one in or saved with --model)",
    )
    ap.add_argument("--bench", default="gsm8k,math", help=f"comma list of: {','.join(BENCHMARKS)}")
    ap.add_argument("--shots", type=int, default=0, help="few-shot exemplars per prompt")
    ap.add_argument("--samples", type=int, default=1, help="N samples per question (1 = greedy)")
    ap.add_argument("--vote", choices=["majority"], default="majority", help="how N samples vote")
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (N > 1)")
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (N > 1)")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--limit", type=int, default=None, help="first M questions of each benchmark")
    ap.add_argument("--out", default="eval_out", help="output folder (resumed if it exists)")
    ap.add_argument("--data-dir", default=None, help="benchmarks folder (default: shared/data)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--format",
        choices=FORMATS,
        default="cot",
        help="cot: chain-of-thought; pot: few-shot program-of-thought (a program prints the "
        "answer); tir: tool-integrated reasoning (code blocks run, outputs fed back)",
    )
    ap.add_argument("--max-rounds", type=int, default=4, help="tir: code executions per sample")
    args = ap.parse_args(argv)
    for name in ("shots", "max_new_tokens"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.samples < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--samples, --batch-size and --limit must be >= 1")
    args.benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    unknown = [b for b in args.benches if b not in BENCHMARKS]
    if unknown or not args.benches:
        ap.error(f"--bench: unknown {unknown}; choose from {','.join(BENCHMARKS)}")
    allowed = benches_for(args.format)
    if allowed is not None and (outside := [b for b in args.benches if b not in allowed]):
        ap.error(f"--format {args.format} runs on {','.join(allowed)} only, not {outside}")
    if args.max_rounds < 0:
        ap.error("--max-rounds must be >= 0")
    return args


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    sampled = args.samples > 1
    return {
        "model": str(Path(args.model).resolve()),
        "shots": args.shots,
        "samples": args.samples,
        "vote": args.vote,
        "temperature": args.temperature if sampled else 0.0,
        "top_p": args.top_p if sampled else 1.0,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "backend": args.backend,
        "tokenizer": str(Path(args.tokenizer).resolve()) if args.tokenizer else None,
        "format": args.format,
        **({"max_rounds": args.max_rounds} if args.format == "tir" else {}),
    }


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [
            k for k in _RESULT_SETTINGS if old.get(k, _SETTING_DEFAULTS.get(k)) != settings.get(k)
        ]
        if changed:
            raise SystemExit(
                f"dsm eval: {out} holds a run with other settings ({', '.join(changed)}); "
                "use another --out to start a new run"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _records(
    examples: list[Example],
    prompts: list[str],
    generated: Generated,
    samples: int,
    checker: SymbolicChecker,
) -> list[dict]:
    outputs = generated.outputs
    flat_graded = [g for texts in generated.graded for g in texts]
    flat_golds = [e.gold for e, outs in zip(examples, outputs) for _ in outs]
    flat_kinds = [e.kind for e, outs in zip(examples, outputs) for _ in outs]
    grades = iter(grade_batch(flat_graded, flat_golds, flat_kinds, checker=checker))
    records = []
    for q, (example, prompt, outs) in enumerate(zip(examples, prompts, outputs)):
        gs = [next(grades) for _ in outs]
        record: dict[str, Any] = {"id": example.id, "prompt": prompt, "gold": example.gold}
        tool = generated.tool[q] if generated.tool is not None else None
        if samples == 1:
            record.update(output=outs[0], answer=gs[0].pred, correct=gs[0].correct)
            if tool is not None:
                record["tool"] = tool[0]
        else:
            answers = [g.pred for g in gs]
            symbolic = example.kind in ("math", "cloze")
            winner, votes = majority_vote(answers, symbolic=symbolic, checker=checker)
            record.update(
                outputs=outs,
                answers=answers,
                corrects=[g.correct for g in gs],
                maj_answer=None if winner is None else answers[winner],
                maj_votes=votes,
                maj_correct=winner is not None and gs[winner].correct,
            )
            if tool is not None:
                record["tools"] = tool
        records.append(record)
    return records


def _tokenizer_dir(args: argparse.Namespace, model_dir: Path, out: Path) -> Path | None:
    """The tokenizer folder to load: ``--tokenizer`` made loadable under ``out``, else None
    (the model folder's own); raises FileNotFoundError when neither has one."""
    if args.tokenizer:
        return save_hf_tokenizer(args.tokenizer, out / "tokenizer")
    if not has_tokenizer(model_dir):
        raise FileNotFoundError(
            f"--model {args.model}: no tokenizer in {model_dir} (no tokenizer.json); "
            "pass --tokenizer with the tokenizer.json it was trained with"
        )
    return None


def run_eval(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Evaluate ``args.model`` on ``args.benches``; returns metrics per benchmark."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    for flag in ("model", "tokenizer"):  # before anything is written under --out
        value = getattr(args, flag)
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"--{flag} {value}: no such file or folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    _check_resume(out, settings)
    data = {b: load_benchmark(b, args.data_dir, args.limit) for b in args.benches}
    gen_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        num_samples=args.samples,
        seed=args.seed,
    )
    generator: Generator | None = None
    sandbox = Sandbox() if args.format != "cot" else None
    results: dict[str, dict[str, float]] = {}
    chunk = args.batch_size * 4  # questions per append: little work lost when killed
    with (
        contextlib.ExitStack() as stack,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        ) as progress,
    ):
        if sandbox is not None:
            stack.callback(sandbox.close)
        workers = max(1, int(os.environ.get("DSM_VERIFY_WORKERS", "1")))
        checker = stack.enter_context(SymbolicChecker(EquivalenceConfig(num_workers=workers)))
        for bench, examples in data.items():
            path = out / f"samples_{bench}.jsonl"
            repair_tail(path)
            done = {r["id"] for r in read_records(path)}
            pending = [e for e in examples if e.id not in done]
            task = progress.add_task(
                bench, total=len(examples), completed=len(examples) - len(pending)
            )
            for start in range(0, len(pending), chunk):
                batch = pending[start : start + chunk]
                if generator is None:
                    model_dir = resolve_model_dir(args.model, out)
                    tokenizer = _tokenizer_dir(args, model_dir, out)
                    generator = load_generator(
                        args.backend, model_dir, args.batch_size, args.dtype, tokenizer=tokenizer
                    )
                prompts = [
                    build_format_prompt(args.format, e, args.shots, args.data_dir) for e in batch
                ]
                generated = generate_format(
                    args.format,
                    generator,
                    batch,
                    prompts,
                    gen_config,
                    sandbox=sandbox,
                    max_rounds=args.max_rounds,
                    on_batch=lambda n, t=task: progress.advance(t, n),
                )
                records = _records(batch, prompts, generated, args.samples, checker)
                append_records(path, records)
            wanted = {e.id for e in examples}
            records = [r for r in read_records(path) if r["id"] in wanted]
            results[bench] = summarize(records, args.samples)
    write_summary(out, results, Path(args.model).name, settings)
    return results


def main(argv: list[str]) -> int:
    """``dsm eval --model DIR --bench gsm8k,math [...]``; see ``--help``."""
    args = parse_args(argv)
    try:
        results = run_eval(args)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line, no traceback
        print(f"dsm eval: error: {e}", file=sys.stderr)
        return 2
    print(render_markdown(results, Path(args.model).name, args.format))
    print(f"wrote {Path(args.out) / 'summary.md'} and samples_<bench>.jsonl")
    return 0
