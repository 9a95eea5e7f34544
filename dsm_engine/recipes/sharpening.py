"""Figure 7 of the paper on the engine: Pass@K and Maj@K of a policy before and after RL.

``sample_questions`` draws N samples per held-out question from a checkpoint (the GRPO sampler,
``temperature`` as in the paper's 0.7) and grades them with the verifier; ``k_curves``
(``dsm_engine.eval.k_curves``) turns them into both curves; ``compare`` does that for two
checkpoints and writes ``sharpening.json``, ``sharpening.md`` and ``sharpening.png``.

The paper's finding (§5.2.2): RL raises Maj@K but not Pass@K, i.e. it makes the output
distribution more robust (the right answer more often the majority) rather than adding
answers the model could not find before. ``compare``'s report says whether each held here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dsm_engine.eval.k_curves import SampledQuestion, k_curves
from dsm_engine.grpo.data import Prompt
from dsm_engine.recipes.report_files import write_report_files
from dsm_engine.text_codec import TextCodec


@dataclass(frozen=True)
class SharpeningOptions:
    """samples: N per question (the largest K). ks: the K drawn (each <= samples).
    draws: random K-subsets per question for Maj@K (see ``k_curves``). seed: of sampling and
    subsets. max_batch_rows: rows per sampler call."""

    samples: int = 64
    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    temperature: float = 0.7
    max_new_tokens: int = 32
    draws: int = 256
    seed: int = 0
    max_batch_rows: int = 512

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        bad = [k for k in self.ks if not 1 <= k <= self.samples]
        if bad or not self.ks:
            raise ValueError(f"ks must be non-empty and in [1, samples={self.samples}], got {bad}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature}")


def sample_questions(
    checkpoint: str | Path,
    prompts: Sequence[Prompt],
    codec: TextCodec,
    options: SharpeningOptions,
) -> list[SampledQuestion]:
    """N samples per prompt from the policy at ``checkpoint`` (a dsm checkpoint root or step
    folder), graded by the verifier against each prompt's gold answer. Sets up and tears down
    a one-process parallel context for the load (or uses the caller's)."""
    from dsm_engine.grpo.sampling import sync_weights
    from dsm_engine.models.checkpoint import read_meta, resolve_checkpoint
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config
    from dsm_engine.models.parallel import ParallelConfig, parallel_session
    from dsm_engine.models.pretrained import from_pretrained
    from dsm_engine.rewards import grade_batch
    from dsm_engine.rollout.base import SamplingParams
    from dsm_engine.rollout.factory import build_rollout_engine

    model_cfg = model_config(read_meta(resolve_checkpoint(checkpoint))["model_config"])
    engine = build_rollout_engine(
        "hf", hf_config(model_cfg), pad_token_id=codec.pad_id, max_batch_rows=options.max_batch_rows
    )
    with parallel_session(ParallelConfig(), seed=options.seed) as ctx:
        sync_weights(from_pretrained(checkpoint, ctx=ctx), engine, model_cfg)
    params = SamplingParams(
        temperature=options.temperature,
        max_new_tokens=options.max_new_tokens,
        stop_token_ids=[codec.eos_id],
        seed=options.seed,
    )
    out = engine.generate([p.token_ids for p in prompts], options.samples, params)
    texts = [codec.decode(ids) for ids in out.token_ids]
    golds = [prompts[i].gold for i in out.prompt_index]
    grades = grade_batch(texts, golds, kind="auto")
    n = options.samples
    return [
        SampledQuestion(
            answers=[g.pred for g in grades[i * n : (i + 1) * n]],
            corrects=[g.correct for g in grades[i * n : (i + 1) * n]],
        )
        for i in range(len(prompts))
    ]


@dataclass
class SharpeningResult:
    """Both curves of each policy (fractions by K) and the report's verdicts."""

    curves: dict[str, dict[str, dict[int, float]]]  # policy label -> "pass"/"maj" -> K -> value
    options: SharpeningOptions
    questions: int

    def gain(self, metric: str, k: int, before: str = "before", after: str = "after") -> float:
        """``after - before`` of ``metric`` ("pass" or "maj") at ``k``."""
        return self.curves[after][metric][k] - self.curves[before][metric][k]

    def findings(self, tolerance: float = 0.02) -> list[str]:
        """The paper's two qualitative findings, each checked at the largest K (and Maj@K
        over every K > 1); ``tolerance``: a change smaller than this counts as "unchanged"."""
        k = max(self.options.ks)
        maj_up = [kk for kk in self.options.ks if kk > 1 and self.gain("maj", kk) > tolerance]
        pass_gain = self.gain("pass", k)
        return [
            f"Maj@K rises with RL at {len(maj_up)} of "
            f"{sum(kk > 1 for kk in self.options.ks)} K > 1 (Maj@{k}: "
            f"{self.gain('maj', k):+.3f}) - the paper: it rises.",
            f"Pass@{k} changes by {pass_gain:+.3f} "
            f"({'unchanged' if abs(pass_gain) <= tolerance else 'changed'} within "
            f"{tolerance}) - the paper: unchanged.",
        ]


def compare(
    checkpoints: dict[str, str | Path],
    prompts: Sequence[Prompt],
    codec: TextCodec,
    out_dir: str | Path,
    options: SharpeningOptions | None = None,
    *,
    meta: dict[str, str] | None = None,
) -> SharpeningResult:
    """Both curves for each labelled checkpoint (``{"before": ..., "after": ...}``); writes
    ``sharpening.json`` (curves, settings and ``meta``: e.g. versions, the device),
    ``sharpening.md`` (``meta`` on its first line) and ``sharpening.png``."""
    options = options or SharpeningOptions()
    curves = {}
    for label, path in checkpoints.items():
        sampled = sample_questions(path, prompts, codec, options)
        curves[label] = k_curves(sampled, options.ks, draws=options.draws, seed=options.seed)
    result = SharpeningResult(curves, options, len(prompts))
    record = {
        "options": asdict(options),
        "questions": len(prompts),
        "checkpoints": {k: str(v) for k, v in checkpoints.items()},
        "curves": curves,
    }
    out = write_report_files(
        out_dir,
        json_name="sharpening.json",
        record=record,
        title="Pass@K and Maj@K before and after RL",
        body=render_markdown(result),
        meta=meta,
        md_name="sharpening.md",
    )
    plot(result, out / "sharpening.png")
    return result


def render_markdown(result: SharpeningResult) -> str:
    """The curves as a table (percent), then the findings when there is a before and after."""
    ks = result.options.ks
    lines = [
        "| policy | metric | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for label, curve in result.curves.items():
        for metric in ("pass", "maj"):
            cells = " | ".join(f"{100 * curve[metric][k]:.1f}" for k in ks)
            lines.append(f"| {label} | {metric.capitalize()}@K | {cells} |")
    o = result.options
    lines += [
        "",
        f"- {result.questions} held-out questions, {o.samples} samples each at temperature "
        f"{o.temperature}; Maj@K over {o.draws} random K-subsets per question (exact when "
        "there are fewer).",
    ]
    if {"before", "after"} <= set(result.curves):
        lines += [f"- {f}" for f in result.findings()]
    return "\n".join(lines) + "\n"


def plot(result: SharpeningResult, path: str | Path) -> Path:
    """Pass@K (dashed) and Maj@K (solid) against K on a log axis, one colour per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = list(result.options.ks)
    for i, (label, curve) in enumerate(result.curves.items()):
        color = f"C{i}"
        ax.plot(ks, [100 * curve["maj"][k] for k in ks], "-o", color=color, label=f"{label} Maj@K")
        passes = [100 * curve["pass"][k] for k in ks]
        ax.plot(ks, passes, "--s", color=color, label=f"{label} Pass@K")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (samples per question)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Pass@K and Maj@K before and after RL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
