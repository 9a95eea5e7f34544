"""The ``dsm`` command: a thin dispatcher to each subcommand's ``main(argv)``.

Subcommands live beside the code they drive; this table only names them, and each is
imported on use so that ``dsm data ...`` never imports megatron-core, nor ``dsm train ...``
datatrove. Launch distributed jobs as ``torchrun ... -m dsm_engine.cli train pretrain ...``.
"""

from __future__ import annotations

import importlib
import sys

# command words -> ("module:function", one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("quickstart",): ("dsm_engine.quickstart:main", "mine, pretrain, GRPO and evaluate end to end"),
    ("train", "pretrain"): ("dsm_engine.trainers.pretrain:main", "continued pretraining"),
    ("train", "sft"): ("dsm_engine.trainers.sft:main", "supervised fine-tuning"),
    ("train", "grpo"): ("dsm_engine.commands.train_grpo:main", "GRPO reinforcement learning"),
    ("train", "rm"): ("dsm_engine.trainers.reward_model:main", "train an ORM or PRM"),
    ("rm", "label"): ("dsm_engine.commands.rm_label:main", "label samples for reward models"),
    ("convert", "hf-to-dsm"): ("dsm_engine.models.convert:hf_to_dsm_main", "import a HF Llama"),
    ("convert", "dsm-to-hf"): ("dsm_engine.models.convert:dsm_to_hf_main", "export to HF Llama"),
    ("data", "mine"): ("dsm_engine.commands.data_mine:main", "iterative math mining"),
    ("data", "decontaminate"): (
        "dsm_engine.data_pipeline.decontaminate:main",
        "remove benchmark n-grams",
    ),
    ("data", "tokenize"): ("dsm_engine.data_pipeline.tokenize:main", "write .bin/.idx shards"),
    ("eval",): ("dsm_engine.eval.cli:main", "evaluate on GSM8K, MATH, CMATH, ..."),
    ("plot",): ("dsm_engine.plotting:main", "plot a run's curves to PNG"),
    ("profile",): ("dsm_engine.trainers.profile_report:main", "phase times of a profiled run"),
}


def _usage() -> str:
    lines = ["usage: dsm COMMAND [args ...]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<24} {help_text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dsm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            target, _ = COMMANDS[words]
            module_name, func_name = target.split(":")
            func = getattr(importlib.import_module(module_name), func_name)
            result = func(argv[n:])
            return int(result or 0)
    print(f"dsm: unknown command '{' '.join(argv[:2])}'\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
