"""The paper's Figure 7 on the CPU: Pass@K and Maj@K of the tiny arithmetic policy before and
after GRPO (``dsm_engine.recipes.sharpening``).

    python -P benchmarks/paper/fig7_sharpening.py [--work runs/fig7] [--questions 100]

Pretrains the arithmetic recipe's policy (``dsm_engine.recipes.arithmetic``), runs its GRPO
recipe from it, then samples ``--samples`` answers per held-out question from both checkpoints
at temperature 0.7 and writes ``benchmarks/results/fig7_sharpening/sharpening.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from common import RESULTS, run_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/fig7", help="folder of the runs")
    parser.add_argument("--out", default=str(RESULTS / "fig7_sharpening"))
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--grpo-steps", type=int, default=90)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from dsm_engine.grpo.data import PromptDataset
    from dsm_engine.grpo.trainer import run_grpo
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import grpo_config, prepare, pretrain
    from dsm_engine.recipes.sharpening import SharpeningOptions, compare
    from dsm_engine.text_codec import TextCodec

    tic = time.process_time()
    paths, eos = prepare(Path(args.work), seed=args.seed)
    init = pretrain(paths, eos, steps=args.pretrain_steps)
    destroy_parallel()
    cfg = grpo_config(paths, init, grpo={"steps": args.grpo_steps})
    run_grpo(cfg)
    destroy_parallel()
    codec = TextCodec(cfg.data.tokenizer)
    prompts = PromptDataset(cfg.data, codec, path=cfg.eval.path).prompts[: args.questions]
    ks = tuple(k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= args.samples)
    options = SharpeningOptions(samples=args.samples, ks=ks, seed=args.seed)
    meta = run_info()
    meta.update(
        pretrain_steps=str(args.pretrain_steps),
        grpo_steps=str(args.grpo_steps),
        corpus_seed=str(args.seed),
    )
    result = compare(
        {"before": init, "after": paths.grpo_run / "checkpoints"},
        prompts,
        codec,
        args.out,
        options,
        meta=meta,
    )
    for line in result.findings():
        print(line)
    print(f"wrote {args.out} ({time.process_time() - tic:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
