"""The paper's Figure 5 on the CPU: held-out accuracy over training of RFT, Online RFT,
GRPO with outcome supervision and GRPO with process supervision, all from the same pretrained
policy with the same sample budget (``dsm_engine.recipes.paradigm``).

    python -P benchmarks/paper/fig5_paradigm.py [--work runs/fig5] [--steps 90] [--seed 0]

Pretrains the arithmetic recipe's policy (skipped when ``--work`` already holds its
checkpoint of ``--pretrain-steps``; the pretraining is deterministic), labels and trains its
PRM (``label_and_train_prm``), runs the four methods, then writes
``benchmarks/results/fig5_paradigm/{report.md,paradigm.json,paradigm.png}``.

``--methods`` runs a subset without writing the report, so that separate processes can train
the methods side by side; ``--report-only`` then collects every run under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))
from common import RESULTS, run_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/fig5", help="folder of the runs")
    parser.add_argument("--out", default=str(RESULTS / "fig5_paradigm"))
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=90, help="RL steps of every method")
    parser.add_argument("--seed", type=int, default=0, help="corpus and split seed")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--methods", nargs="+", help="train only these, write no report")
    parser.add_argument("--report-only", action="store_true", help="collect runs, train none")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    args = parser.parse_args(argv)

    from dsm_engine.recipes.paradigm import METHODS, ParadigmOptions, collect, run_methods

    tic = time.process_time()
    work = Path(args.work)
    options = ParadigmOptions(steps=args.steps, progress=args.progress)
    methods = args.methods or list(METHODS)
    if not args.report_only:
        paths, init = _policy(work, args)
        prms = _prm(paths, init, work, args) if "grpo_process" in methods else []
        run_methods(paths, init, work / "runs", options, prms=prms, methods=methods)
    if args.methods:
        print(f"trained {methods} under {work / 'runs'} ({time.process_time() - tic:.0f} CPU s)")
        return 0
    result = collect(work / "runs", options)
    result.prm_metrics = json.loads((work / "prm_metrics.json").read_text())
    _write(result, options, args)
    print(f"wrote {args.out} ({time.process_time() - tic:.0f} CPU s)")
    return 0


def _policy(work: Path, args: argparse.Namespace):
    """The recipe's data and pretrained checkpoint under ``work`` (reused when there)."""
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import DemoPaths, prepare, pretrain

    paths = DemoPaths(work)
    init = paths.pretrain_run / "checkpoints"
    if (init / "latest").is_file() and (init / f"step_{args.pretrain_steps:07d}").is_dir():
        print(f"reusing the pretrained policy {init}")
        return paths, init
    paths, eos = prepare(work, seed=args.seed)
    init = pretrain(paths, eos, steps=args.pretrain_steps, progress=args.progress)
    destroy_parallel()
    return paths, init


def _prm(paths, init: Path, work: Path, args: argparse.Namespace) -> list[Path]:
    """The PRM of process supervision; its held-out metrics go to ``prm_metrics.json``."""
    from dsm_engine.models.parallel import destroy_parallel
    from dsm_engine.recipes.arithmetic import label_and_train_prm

    prms, metrics = label_and_train_prm(paths, init, work / "prm", progress=args.progress)
    destroy_parallel()
    (work / "prm_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return prms


def _write(result, options, args: argparse.Namespace) -> None:
    """The report files under ``args.out``, with the machine, versions and settings."""
    from dsm_engine.recipes.paradigm import options_record, write_report

    meta = run_info()
    meta.update(
        pretrain_steps=str(args.pretrain_steps),
        corpus_seed=str(args.seed),
        **{k: str(v) for k, v in options_record(options).items() if k != "progress"},
    )
    notes = [
        "Setup: every method starts from the same pretrained checkpoint and draws the same "
        f"number of samples ({options.steps} steps x {options.prompts_per_step} prompts x "
        f"{options.group_size} samples); learning rate 5e-4 with cosine decay to 5e-5, "
        "sampling temperature 1.0, held-out greedy accuracy on "
        f"{options.eval_prompts} problems every {options.eval_every} steps. RFT samples "
        "from the pretrained policy throughout (offline rejection sampling), Online RFT from "
        "the current one. GRPO+OS: verifier reward, beta 0.04; GRPO+PS: one PRM "
        "(`label_and_train_prm`), beta 1.0 (the recipe's setting, see `prm_grpo_config`: "
        "at 0.04 the tiny PRM's blind spot for operands collapses the policy). One seed.",
    ]
    write_report(result, args.out, meta=meta, notes=notes + args.note)
    for finding, _ in result.findings():
        print(finding)


if __name__ == "__main__":
    raise SystemExit(main())
