"""``dsm data mine``: iterative math mining from WARC files (the driver is
:mod:`dsm_engine.data_pipeline.mine`, whose docstring describes stages, outputs and resume).

    dsm data mine --warc 'crawl/*.warc.gz' --seed seed.jsonl --out mined/ --iterations 2

Exit status: 0 corpus written, 1 corpus empty, 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import json
import sys

from dsm_engine.data_pipeline import mine as mining
from dsm_engine.data_pipeline.mine import MineConfig, MineResult, funnel_summary, mine_corpus

__all__ = ["main"]


def _empty_result_warning(result: MineResult, cfg: MineConfig) -> str:
    last = result.funnel["iterations"][-1]
    c = cfg.classifier
    budget = f", classifier.token_budget {c.token_budget}" if c.token_budget else ""
    return (
        f"dsm data mine: WARNING: the mined corpus {result.mined} is EMPTY.\n"
        f"  The classifier kept none of the {last['scored']} pool pages in iteration "
        f"{last['iteration']}: the best scored P(math) {last.get('top_score')}, and pages need "
        f"classifier.threshold {c.threshold}{budget}; see {result.out}/iter_{last['iteration']}/."
    )


def main(argv: list[str]) -> int:
    """``dsm data mine``: see the module docstring; ``key=value`` overrides any MineConfig field."""
    from dsm_engine.config import ConfigError, load_config, split_config_args
    from dsm_engine.folder_lock import FolderLock, FolderLockedError

    parser = argparse.ArgumentParser(
        prog="dsm data mine",
        description=mining.__doc__.split("\n")[0],
        epilog="exit status: 0 corpus written, 1 corpus empty, 2 bad input or settings",
    )
    parser.add_argument("--warc", help="glob of WARC/WET files")
    parser.add_argument("--seed", help="seed JSONL (one {'text': ...} per line)")
    parser.add_argument("--out", help="output folder; run again to resume")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--executor", choices=["local", "slurm", "ray"])
    parser.add_argument("--annotations", help="file of annotated math URL paths (one per line)")
    parser.add_argument(
        "--auto-annotate", type=float, help="accept proposed paths with this collected fraction"
    )
    parser.add_argument("--threshold", type=float, help="keep pages with P(math) >= this")
    parser.add_argument(
        "--token-budget", type=int, help="keep at most this many tokens (best first)"
    )
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) seed lines that are not JSON objects with a string 'text'",
    )
    parser.add_argument("--no-progress", action="store_true")
    try:
        config, overrides, rest = split_config_args(argv)
        args = parser.parse_args(rest)
        flags = {
            "warc": args.warc,
            "seed": args.seed,
            "out": args.out,
            "iterations": args.iterations,
            "executor.kind": args.executor,
            "annotations": args.annotations,
            "auto_annotate": args.auto_annotate,
            "classifier.threshold": args.threshold,
            "classifier.token_budget": args.token_budget,
            "skip_bad_lines": args.skip_bad_lines or None,
        }
        overrides += [
            f"{k}={json.dumps(v) if isinstance(v, str) else v}"
            for k, v in flags.items()
            if v is not None
        ]
        cfg = load_config(MineConfig, config, overrides)
        for name in ("warc", "seed", "out"):
            if not getattr(cfg, name):
                raise ConfigError(f"--{name} is required")
        with FolderLock(cfg.out):  # one mining run per output folder
            result = mine_corpus(cfg, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError, FolderLockedError) as e:
        print(f"dsm data mine: error: {e}", file=sys.stderr)
        return 2
    print(funnel_summary(result.funnel, cfg))
    print(
        f"mined corpus: {result.mined} ({result.funnel['kept']} pages); funnel: {result.out / 'funnel.json'}"
    )
    if not result.funnel["kept"]:
        print(_empty_result_warning(result, cfg), file=sys.stderr)
        return 1
    return 0
