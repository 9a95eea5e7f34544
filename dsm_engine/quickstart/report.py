"""The quickstart's run report: ``DIR/report.md``, ``DIR/report.html`` and PNG plots.

Everything in it is read from the run folder (stage markers, the trainers' ``metrics.jsonl``,
the resolved configs), so a resumed run reports the same numbers as an uninterrupted one.
The report is a list of blocks rendered twice: Markdown and a self-contained HTML page
(images referenced beside it in ``DIR/plots/``).
"""

from __future__ import annotations

import html
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dsm_engine.quickstart.state import RunState, atomic_write_text

SECTIONS = (
    "Data funnel",
    "Pretraining",
    "GRPO",
    "Evaluation before and after GRPO",
    "Timings",
    "Resolved configs",
)


@dataclass
class Block:
    """One report element: ``kind`` in h1/h2/h3/p/table/img/code."""

    kind: str
    text: str = ""
    header: list[str] | None = None
    rows: list[list[Any]] | None = None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


# ----------------------------------------------------------------------------- plots


def plot_pretrain(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss per step of the pretraining run."""
    pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*pts), lw=1.5)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Pretraining loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grpo(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Reward, KL to the reference and accuracy (rollouts; held-out when logged) per step."""
    steps = [r for r in rows if "reward_mean" in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    x = [r["step"] for r in steps]
    axes[0].plot(x, [r["reward_mean"] for r in steps], lw=1.5)
    axes[0].set(title="reward (mean of group)", xlabel="step")
    axes[1].plot(x, [r.get("kl_mean", float("nan")) for r in steps], lw=1.5, color="tab:red")
    axes[1].set(title="KL to reference (k3)", xlabel="step")
    axes[2].plot(
        x, [100 * r.get("accuracy", float("nan")) for r in steps], lw=1.5, label="rollouts"
    )
    held = [(r["step"], 100 * r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    if held:
        axes[2].plot(*zip(*held), "o-", lw=1.5, label="held-out (greedy)")
    axes[2].set(title="accuracy (%)", xlabel="step")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- sections


def _funnel(info: dict[str, Any]) -> list[Block]:
    f, dec, inp = info["funnel"], info["decontamination"], info["inputs"]
    kept_after = dec.get("documents_in", 0) - dec.get("documents_dropped_empty", 0)
    rows = [
        ["WARC records read", f.get("warc_records")],
        ["pages in (responses)", f.get("pages_in")],
        ["HTML pages", f.get("html_pages")],
        ["text extracted", f.get("extracted")],
        ["language kept (en, zh)", f.get("language_kept")],
        ["after exact URL dedup", f.get("url_dedup_kept")],
        ["after MinHash near-dedup", f.get("near_dedup_kept")],
        [f"kept by the math classifier ({f.get('iterations_run')} iterations)", f.get("kept")],
        ["after decontamination", kept_after],
    ]
    removed = [
        ["documents checked", dec.get("documents_in", 0)],
        ["documents with benchmark text", dec.get("documents_contaminated", 0)],
        ["lines removed", dec.get("segments_removed", 0)],
        ["documents dropped (nothing left)", dec.get("documents_dropped_empty", 0)],
    ]
    its = [
        [
            it["iteration"],
            it["positives"],
            it["scored"],
            it["collected"],
            it["overlap_with_previous"],
            it["seed_added"],
        ]
        for it in info.get("iterations", [])
    ]
    blocks = [
        Block("h2", "Data funnel"),
        Block(
            "p",
            f"Input: the real Common Crawl samples ({', '.join(inp['real_warcs'])}) and "
            f"{inp['synthetic_pages']} generated pages ({inp['synthetic_math_pages']} math, the rest "
            f"non-math and duplicates); {len(inp['planted_benchmark_questions'])} math pages "
            f"copy a GSM8K test question, which decontamination must remove. "
            f"Seed corpus: {inp['seed_docs']} documents.",
        ),
        Block("table", header=["stage", "pages"], rows=rows),
        Block("h3", "Removed by decontamination (10-gram rule, shipped benchmarks)"),
        Block("table", header=["", "count"], rows=removed),
    ]
    if info.get("removed_examples"):
        ex = [
            [e["url"], ", ".join(e["benchmarks"] or []), e["text"]]
            for e in info["removed_examples"]
        ]
        blocks.append(Block("table", header=["page", "benchmark", "removed line (start)"], rows=ex))
    blocks += [
        Block("h3", "Mining iterations"),
        Block(
            "table",
            header=[
                "iteration",
                "positives",
                "pages scored",
                "collected",
                "overlap with previous",
                "added to seed",
            ],
            rows=its,
        ),
    ]
    return blocks


def _evaluation(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[Block]:
    rows = []
    for key, name in (
        ("heldout", "held-out arithmetic word problems (exact match)"),
        ("gsm8k", "GSM8K test slice (pass@1, zero-shot CoT)"),
    ):
        b = before[key] if before else None
        a = after[key] if after else None
        delta = a["accuracy"] - b["accuracy"] if a and b else None
        rows.append(
            [
                name,
                (b or a or {}).get("n"),
                f"{b['accuracy']:.1f}" if b else "",
                f"{a['accuracy']:.1f}" if a else "",
                f"{delta:+.1f}" if delta is not None else "",
            ]
        )
    return [
        Block("h2", "Evaluation before and after GRPO"),
        Block(
            "table",
            header=[
                "benchmark",
                "questions",
                "before GRPO (%)",
                "after GRPO (%)",
                "change (points)",
            ],
            rows=rows,
        ),
        Block(
            "p",
            "Greedy decoding. The held-out problems come from templates and operands no "
            "pretraining text or GRPO prompt used, in the task's prompt format; GSM8K is "
            "far beyond a model this small and is shown for the harness, not the score.",
        ),
    ]


def _timings(state: RunState, stages: list[tuple[str, str]]) -> list[Block]:
    rows, wall, cpu = [], 0.0, 0.0
    for name, title in stages:
        done = state.done(name)
        if done is None:
            rows.append([name, title, "not run", ""])
            continue
        wall += done["wall_s"]
        cpu += done["cpu_s"]
        rows.append([name, title, f"{done['wall_s']:.1f}", f"{done['cpu_s']:.1f}"])
    rows.append(["total", "", f"{wall:.1f}", f"{cpu:.1f}"])
    return [
        Block("h2", "Timings"),
        Block("table", header=["stage", "what", "wall (s)", "CPU (s)"], rows=rows),
        Block(
            "p",
            "Wall time of each stage's last (completing) run; a resumed stage counts "
            "only the run that finished it. CPU time includes child processes.",
        ),
    ]


def _configs(ctx: Any, budget: dict[str, Any]) -> list[Block]:
    blocks = [
        Block("h2", "Resolved configs"),
        Block("h3", f"quickstart sizes (--minutes {budget['minutes']:g})"),
        Block("code", yaml.safe_dump(budget, sort_keys=False)),
    ]
    files = [
        ("mining (dsm data mine)", ctx.data / "mine" / "config.yaml"),
        ("pretraining (dsm train pretrain)", ctx.configs / "pretrain.yaml"),
        ("GRPO (dsm train grpo)", ctx.configs / "grpo.yaml"),
        ("evaluation (dsm eval), GSM8K", ctx.out / "eval" / "grpo" / "gsm8k" / "settings.json"),
    ]
    for title, path in files:
        if path.is_file():
            blocks += [
                Block("h3", f"{title}: {path.relative_to(ctx.out)}"),
                Block("code", path.read_text()),
            ]
    return blocks


def build_blocks(ctx: Any, stages: list[tuple[str, str]], budget: dict[str, Any]) -> list[Block]:
    """Every block of the report, in order (plots written to ``DIR/plots``)."""
    import torch

    state = RunState(ctx.out)
    info = {name: (state.done(name) or {}).get("info") for name, _ in stages}
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    blocks = [
        Block("h1", "dsm quickstart report"),
        Block(
            "p",
            f"Run folder `{ctx.out}`, budget {budget['minutes']:g} minutes, device {device}, "
            f"torch {torch.__version__}, written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        ),
    ]
    if info.get("data"):
        blocks += _funnel(info["data"])
    corpus = info.get("corpus")
    pre_rows = _read_jsonl(ctx.run_dir("pretrain") / "metrics.jsonl")
    blocks.append(Block("h2", "Pretraining"))
    if corpus:
        w = ctx.budget.mined_weight
        blocks.append(
            Block(
                "table",
                header=["source", "documents", "tokens", "sampling weight"],
                rows=[
                    [
                        "generated arithmetic text",
                        corpus["arithmetic_documents"],
                        corpus["arithmetic_tokens"],
                        1 - w,
                    ],
                    [
                        "mined math pages (decontaminated)",
                        corpus["mined_documents"],
                        corpus["mined_tokens"],
                        w,
                    ],
                ],
            )
        )
    png = plot_pretrain(pre_rows, ctx.out / "plots" / "pretrain_loss.png")
    if png:
        losses = [r["loss"] for r in pre_rows if "loss" in r]
        blocks += [
            Block("img", "plots/pretrain_loss.png"),
            Block("p", f"{len(losses)} steps; loss {losses[0]:.3f} → {losses[-1]:.3f}."),
        ]
    grpo_rows = _read_jsonl(ctx.run_dir("grpo") / "metrics.jsonl")
    blocks.append(Block("h2", "GRPO"))
    png = plot_grpo(grpo_rows, ctx.out / "plots" / "grpo_curves.png")
    if png:
        steps = [r for r in grpo_rows if "reward_mean" in r]
        blocks += [
            Block("img", "plots/grpo_curves.png"),
            Block(
                "p",
                f"{len(steps)} steps of {ctx.budget.grpo_prompts_per_step} prompts × "
                f"{ctx.budget.grpo_group_size} samples; reward {steps[0]['reward_mean']:.3f} → "
                f"{steps[-1]['reward_mean']:.3f}, KL {steps[-1].get('kl_mean', float('nan')):.4f} at the end.",
            ),
        ]
    blocks += _evaluation(info.get("eval_before"), info.get("eval_after"))
    blocks += _timings(state, stages)
    blocks += _configs(ctx, budget)
    return blocks


# ----------------------------------------------------------------------------- rendering


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "img":
            out.append(f"![{Path(b.text).stem}]({b.text})")
        elif b.kind == "code":
            out.append("```yaml\n" + b.text.rstrip() + "\n```")
        elif b.kind == "table":
            cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")
            lines = ["| " + " | ".join(b.header or []) + " |", "|" + "---|" * len(b.header or [])]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in b.rows or []]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block]) -> str:
    esc = html.escape
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{esc(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{esc(b.text)}</p>")
        elif b.kind == "img":
            body.append(f'<p><img src="{esc(b.text)}" alt="{esc(Path(b.text).stem)}"></p>')
        elif b.kind == "code":
            body.append(f"<details><summary>show</summary><pre>{esc(b.text)}</pre></details>")
        elif b.kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b.header or [])
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in r) + "</tr>"
                for r in b.rows or []
            )
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:.8em;overflow:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>dsm quickstart report</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(ctx: Any, stages: list[tuple[str, str]], budget: dict[str, Any]) -> Path:
    """Write ``report.md`` and ``report.html`` into the run folder; returns the Markdown path."""
    blocks = build_blocks(ctx, stages, budget)
    path = ctx.out / "report.md"
    atomic_write_text(path, to_markdown(blocks))
    atomic_write_text(path.with_suffix(".html"), to_html(blocks))
    return path
