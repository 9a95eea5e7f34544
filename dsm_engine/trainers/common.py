"""What every trainer's ``main(argv)`` does around its loop: parse, run, report errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from dsm_engine.config import ConfigError, describe_config
from dsm_engine.trainers.config import RunConfig, load_run_config
from dsm_engine.trainers.run_dir import RunDirError

C = TypeVar("C", bound=RunConfig)

# Errors that are the user's input (config, files, data), reported as one line, exit code 2.
USER_ERRORS = (ConfigError, RunDirError, FileNotFoundError, ValueError)


def config_help(prog: str, cls: type[RunConfig]) -> str:
    """``--help``: usage, then every config key with its default and type (from the dataclasses)."""
    from dsm_engine.models.config import MODEL_PRESETS, ModelConfig

    return "\n".join(
        [
            f"usage: {prog} --config CONFIG.yaml [section.key=value ...]",
            "",
            " ".join((cls.__doc__ or "").split()),
            "",
            "Config keys (YAML sections; override any as section.key=value), with defaults:",
            "",
            describe_config(cls),
            "",
            f"model: {{preset: NAME}} (one of {', '.join(MODEL_PRESETS)}) plus any of these keys"
            " (a preset sets its own values):",
            describe_config(ModelConfig, indent=2),
        ]
    )


def _lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective or store call failing because another rank is gone."""
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or "gloo/transport/" in str(error)


def run_main(prog: str, cls: type[C], argv: list[str], run: Callable[[C], object]) -> int:
    """Parse ``[--config PATH] key=value ...`` into ``cls`` and call ``run(cfg)``.

    Returns 0 on success, 2 on a user error (printed as ``prog: error: ...``), 1 when another
    rank of the job died or hung (the usual sign of a lost node; printed with what to do).
    """
    from dsm_engine.models.parallel import destroy_parallel

    if any(a in ("-h", "--help") for a in argv):
        print(config_help(prog, cls))
        return 0
    try:
        cfg, rest = load_run_config(cls, argv)
        if rest:
            raise ConfigError(f"unexpected arguments {rest} (use --config PATH and key=value)")
        run(cfg)
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        first = str(e).strip().splitlines()[0]
        print(
            f"{prog}: error: lost contact with the other ranks ({type(e).__name__}: {first}).\n"
            "A process of this job died or stopped answering, on this node or another. Start "
            "every node again with resume=auto to continue from the last complete checkpoint "
            f"in {cfg.run_dir}/checkpoints.",
            file=sys.stderr,
        )
        return 1
    finally:
        destroy_parallel()
    return 0
