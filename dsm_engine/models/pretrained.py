"""``from_pretrained``: a ready model from a Hugging Face Llama folder or a dsm checkpoint."""

from __future__ import annotations

from pathlib import Path

from dsm_engine.models.build import DsmGPTModel, build_model
from dsm_engine.models.parallel import ParallelContext, require_context


def from_pretrained(
    path: str | Path, *, ctx: ParallelContext | None = None, **overrides
) -> DsmGPTModel:
    """Build and load a single-process (TP=1, PP=1) model from ``path``.

    ``path`` is a HF folder (``config.json`` + safetensors) or a dsm checkpoint root / step
    folder. ``ctx`` is the parallel context to build in (default: the one already set up; with
    none, ``RuntimeError`` says to open ``parallel_session()``: loading never sets up
    distributed state). ``overrides`` are :class:`ModelConfig` fields (e.g.
    ``params_dtype="bfloat16"``, ``seq_length=4096``).
    """
    path = Path(path)
    ctx = require_context(ctx, "from_pretrained")
    if ctx.tp_size != 1 or ctx.pp_size != 1:
        raise ValueError("from_pretrained builds a whole model: use tp=1, pp=1")
    if (path / "config.json").is_file():
        from dsm_engine.models.convert import HFReader, load_hf_weights, model_config_from_hf

        cfg = model_config_from_hf(path, **overrides)
        model = build_model(cfg, ctx, init_weights=False)
        load_hf_weights(model, HFReader(path), cfg)
        return model.eval()
    from dsm_engine.models.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
    from dsm_engine.models.config import model_config

    step_dir = resolve_checkpoint(path)
    cfg = model_config(read_meta(step_dir)["model_config"], **overrides)
    model = build_model(cfg, ctx, init_weights=False)
    load_checkpoint(step_dir, model)
    return model.eval()
