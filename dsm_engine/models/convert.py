"""Hugging Face Llama <-> megatron-core weights.

Three layers of names:

* **HF**: ``model.layers.{i}.self_attn.q_proj.weight`` ... (``LlamaForCausalLM``).
* **canonical**: megatron's local-spec names for the *full, unsharded* model with global layer
  indices, e.g. ``decoder.layers.{i}.self_attention.linear_qkv.weight``.
* **model**: this rank's ``state_dict`` keys (local layer indices, TP shards, TE norm names).

Fusions: q/k/v become ``linear_qkv`` in megatron's per-query-group layout
``[g0: q(heads/groups) k v | g1: q k v | ...]`` (so a TP shard is a contiguous run of whole
groups); gate/up become ``linear_fc1`` = ``[gate; up]``, and a TP shard of it is
``[gate_r; up_r]``. Rotary needs no permutation: HF Llama and megatron (non-interleaved) both
rotate halves.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from dsm_engine.config import ConfigError
from dsm_engine.models.config import ModelConfig
from dsm_engine.models.hf_tokenizer import (
    checkpoint_tokenizer,
    copy_tokenizer_files,
    save_hf_tokenizer,
)

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# model-name suffix -> canonical suffix for transformer-engine's fused norm+linear modules
_TE_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


# ----------------------------------------------------------------------------- configs


def hf_config(cfg: ModelConfig):
    """``transformers.LlamaConfig`` describing ``cfg``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.kv_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.init_method_std,
        rms_norm_eps=cfg.norm_epsilon,
        tie_word_embeddings=not cfg.untie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        attention_bias=False,
        mlp_bias=False,
        dtype=cfg.params_dtype,
        architectures=["LlamaForCausalLM"],
    )


def _rope_theta(hf) -> float:
    params = getattr(hf, "rope_parameters", None) or {}
    if isinstance(params, dict) and params:
        kind = params.get("rope_type", "default")
        if kind not in ("default", None):
            raise ConfigError(f"config.json: rope_type '{kind}' is not supported (only default)")
        return float(params.get("rope_theta", 10000.0))
    scaling = getattr(hf, "rope_scaling", None)
    if scaling:
        raise ConfigError(f"config.json: rope_scaling {scaling} is not supported")
    return float(getattr(hf, "rope_theta", 10000.0))


def model_config_from_hf(hf_or_dir, **overrides) -> ModelConfig:
    """A :class:`ModelConfig` from a ``LlamaConfig`` or a Hugging Face model folder."""
    from transformers import AutoConfig

    hf = (
        AutoConfig.from_pretrained(str(hf_or_dir))
        if isinstance(hf_or_dir, (str, Path))
        else hf_or_dir
    )
    if getattr(hf, "model_type", "llama") != "llama":
        raise ConfigError(f"config.json: model_type '{hf.model_type}' is not a Llama architecture")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf, flag, False):
            raise ConfigError(f"config.json: {flag}=true is not supported")
    head_dim = getattr(hf, "head_dim", None)
    if head_dim and head_dim * hf.num_attention_heads != hf.hidden_size:
        raise ConfigError("config.json: head_dim * num_attention_heads != hidden_size")
    groups = hf.num_key_value_heads
    dtype = str(getattr(hf, "dtype", None) or "float32").replace("torch.", "")
    fields = dict(
        num_layers=hf.num_hidden_layers,
        hidden_size=hf.hidden_size,
        num_attention_heads=hf.num_attention_heads,
        num_query_groups=None if groups in (None, hf.num_attention_heads) else groups,
        ffn_hidden_size=hf.intermediate_size,
        vocab_size=hf.vocab_size,
        seq_length=min(hf.max_position_embeddings, 4096),
        max_position_embeddings=hf.max_position_embeddings,
        rotary_base=_rope_theta(hf),
        norm_epsilon=hf.rms_norm_eps,
        init_method_std=hf.initializer_range,
        untie_embeddings=not hf.tie_word_embeddings,
        params_dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
    )
    fields.update(overrides)
    return ModelConfig(**fields)


# ----------------------------------------------------------------------------- HF <-> canonical


def hf_to_canonical(
    get: Callable[[str], Tensor],
    cfg: ModelConfig,
    layers: Iterable[int] | None = None,
    *,
    embedding: bool = True,
    head: bool = True,
) -> dict[str, Tensor]:
    """Canonical (full, global-index) megatron tensors for the given layers and ends.

    ``get(name)`` returns an HF tensor by name and raises ``KeyError`` naming it if absent.
    """
    ng, d, h = cfg.kv_heads, cfg.head_dim, cfg.hidden_size
    per = cfg.num_attention_heads // ng
    out: dict[str, Tensor] = {}
    if embedding:
        out["embedding.word_embeddings.weight"] = get("model.embed_tokens.weight")
    for i in range(cfg.num_layers) if layers is None else layers:
        p, c = f"model.layers.{i}.", f"decoder.layers.{i}."
        q = get(p + "self_attn.q_proj.weight").reshape(ng, per * d, h)
        k = get(p + "self_attn.k_proj.weight").reshape(ng, d, h)
        v = get(p + "self_attn.v_proj.weight").reshape(ng, d, h)
        out[c + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, h)
        out[c + "self_attention.linear_proj.weight"] = get(p + "self_attn.o_proj.weight")
        out[c + "mlp.linear_fc1.weight"] = torch.cat(
            [get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")], 0
        )
        out[c + "mlp.linear_fc2.weight"] = get(p + "mlp.down_proj.weight")
        out[c + "input_layernorm.weight"] = get(p + "input_layernorm.weight")
        out[c + "pre_mlp_layernorm.weight"] = get(p + "post_attention_layernorm.weight")
    if head:
        out["decoder.final_layernorm.weight"] = get("model.norm.weight")
        if cfg.untie_embeddings:
            out["output_layer.weight"] = get("lm_head.weight")
    return out


def canonical_to_hf(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Inverse of :func:`hf_to_canonical` (splits q/k/v and gate/up); exact copies, no casts."""
    ng, d, h = cfg.kv_heads, cfg.head_dim, cfg.hidden_size
    per = cfg.num_attention_heads // ng
    out: dict[str, Tensor] = {}
    for name, t in sd.items():
        if name == "embedding.word_embeddings.weight":
            out["model.embed_tokens.weight"] = t
        elif name == "decoder.final_layernorm.weight":
            out["model.norm.weight"] = t
        elif name == "output_layer.weight":
            out["lm_head.weight"] = t
        elif m := _LAYER.match(name):
            i, rest = m.group(1), m.group(2)
            p = f"model.layers.{i}."
            if rest == "self_attention.linear_qkv.weight":
                qkv = t.reshape(ng, per + 2, d, h)
                out[p + "self_attn.q_proj.weight"] = qkv[:, :per].reshape(-1, h).contiguous()
                out[p + "self_attn.k_proj.weight"] = qkv[:, per].reshape(-1, h).contiguous()
                out[p + "self_attn.v_proj.weight"] = qkv[:, per + 1].reshape(-1, h).contiguous()
            elif rest == "self_attention.linear_proj.weight":
                out[p + "self_attn.o_proj.weight"] = t
            elif rest == "mlp.linear_fc1.weight":
                gate, up = t.chunk(2, 0)
                out[p + "mlp.gate_proj.weight"] = gate.contiguous()
                out[p + "mlp.up_proj.weight"] = up.contiguous()
            elif rest == "mlp.linear_fc2.weight":
                out[p + "mlp.down_proj.weight"] = t
            elif rest == "input_layernorm.weight":
                out[p + "input_layernorm.weight"] = t
            elif rest == "pre_mlp_layernorm.weight":
                out[p + "post_attention_layernorm.weight"] = t
    return out


# ----------------------------------------------------------------------------- TP sharding


def tp_split_dim(name: str) -> int | None:
    """Dimension a canonical tensor is split along under TP (None = replicated)."""
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1
    if name.endswith(("linear_qkv.weight", "linear_fc1.weight", "word_embeddings.weight")) or (
        name == "output_layer.weight"
    ):
        return 0
    return None


def shard_tp(name: str, t: Tensor, rank: int, size: int) -> Tensor:
    """This TP rank's shard of canonical tensor ``name``."""
    dim = tp_split_dim(name)
    if dim is None or size == 1:
        return t
    if name.endswith("linear_fc1.weight"):
        gate, up = t.chunk(2, 0)
        return torch.cat([gate.chunk(size, 0)[rank], up.chunk(size, 0)[rank]], 0)
    return t.chunk(size, dim)[rank]


def unshard_tp(name: str, shards: list[Tensor]) -> Tensor:
    """Inverse of :func:`shard_tp` given every rank's shard in rank order."""
    dim = tp_split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    if name.endswith("linear_fc1.weight"):
        halves = [s.chunk(2, 0) for s in shards]
        return torch.cat([g for g, _ in halves] + [u for _, u in halves], 0)
    return torch.cat(shards, dim)


# ----------------------------------------------------------------------------- model <-> canonical


def _model_to_canonical_name(key: str, offset: int) -> str | None:
    if key.endswith("_extra_state"):
        return None
    m = _LAYER.match(key)
    if not m:
        return key
    rest = _TE_NAMES.get(m.group(2), m.group(2))
    return f"decoder.layers.{int(m.group(1)) + offset}.{rest}"


def _chunks(models) -> list[torch.nn.Module]:
    from dsm_engine.models.build import _unwrap

    models = models if isinstance(models, (list, tuple)) else [models]
    return [_unwrap(m) for m in models]


def _tp_info() -> tuple[int, int, object]:
    from megatron.core import parallel_state as ps

    return (
        ps.get_tensor_model_parallel_rank(),
        ps.get_tensor_model_parallel_world_size(),
        (ps.get_tensor_model_parallel_group()),
    )


@torch.no_grad()
def load_hf_weights(models, get: Callable[[str], Tensor], cfg: ModelConfig) -> None:
    """Copy HF tensors (``get(name)``) into this rank's model chunk(s), sharding for TP/PP."""
    from dsm_engine.models.build import layer_offset

    tp_rank, tp_size, _ = _tp_info()
    for model in _chunks(models):
        offset = layer_offset(model)
        keys = [k for k in model.state_dict() if not k.endswith("_extra_state")]
        layers = sorted({int(m.group(1)) + offset for k in keys if (m := _LAYER.match(k))})
        tied_head = not cfg.untie_embeddings and "output_layer.weight" in keys
        canon = hf_to_canonical(
            get,
            cfg,
            layers,
            embedding="embedding.word_embeddings.weight" in keys or tied_head,
            head="decoder.final_layernorm.weight" in keys,
        )
        params = model.state_dict()
        for key in keys:
            name = _model_to_canonical_name(key, offset)
            if name == "output_layer.weight" and not cfg.untie_embeddings:
                name = "embedding.word_embeddings.weight"  # last stage's copy of a tied head
            if name not in canon:
                raise KeyError(f"no source tensor for model parameter '{key}' ({name})")
            src = shard_tp(name, canon[name], tp_rank, tp_size)
            dst = params[key]
            if src.shape != dst.shape:
                raise ValueError(
                    f"{name}: shape {tuple(src.shape)} from the checkpoint does not match the "
                    f"model's {tuple(dst.shape)}"
                )
            dst.copy_(src)


def local_canonical(models, grads: bool = False) -> dict[str, Tensor]:
    """This rank's tensors (or their gradients) under canonical names (still TP shards)."""
    from dsm_engine.models.build import layer_offset

    out: dict[str, Tensor] = {}
    for model in _chunks(models):
        offset = layer_offset(model)
        if grads:
            items = [(k, _grad_of(p)) for k, p in model.named_parameters()]
        else:
            items = list(model.state_dict().items())
        for key, t in items:
            name = _model_to_canonical_name(key, offset)
            if name is not None and not (
                name == "output_layer.weight" and model.share_embeddings_and_output_weights
            ):
                out[name] = t.detach()
    return out


def _grad_of(p: torch.nn.Parameter) -> Tensor:
    # megatron's DDP accumulates into main_grad; plain modules into grad
    g = getattr(p, "main_grad", None)
    g = p.grad if g is None else g
    return torch.zeros_like(p) if g is None else g


@torch.no_grad()
def gather_canonical(models, grads: bool = False) -> dict[str, Tensor]:
    """The full canonical state dict (or gradients), gathered over TP and PP, on every rank."""
    from megatron.core import parallel_state as ps

    _, tp_size, tp_group = _tp_info()
    local = local_canonical(models, grads)
    full: dict[str, Tensor] = {}
    for name, t in local.items():
        if tp_size > 1 and tp_split_dim(name) is not None:
            shards = [torch.empty_like(t) for _ in range(tp_size)]
            dist.all_gather(shards, t.contiguous(), group=tp_group)
            full[name] = unshard_tp(name, shards)
        else:
            full[name] = t
    pp_size = ps.get_pipeline_model_parallel_world_size()
    if pp_size == 1:
        return full
    pp_group = ps.get_pipeline_model_parallel_group()
    pp_rank = ps.get_pipeline_model_parallel_rank()
    ranks = dist.get_process_group_ranks(pp_group)
    out: dict[str, Tensor] = {}
    for stage in range(pp_size):
        meta = [
            [(n, tuple(t.shape), t.dtype) for n, t in full.items()] if stage == pp_rank else None
        ]
        dist.broadcast_object_list(meta, src=ranks[stage], group=pp_group)
        for name, shape, dtype in meta[0]:
            if stage == pp_rank:
                t = full[name].contiguous()
            else:
                t = torch.empty(shape, dtype=dtype, device=next(iter(full.values())).device)
            dist.broadcast(t, src=ranks[stage], group=pp_group)
            out.setdefault(name, t)
    return out


def export_hf_state_dict(
    models, cfg: ModelConfig | None = None, parallel_ctx=None
) -> dict[str, Tensor]:
    """The whole model as a HF ``LlamaForCausalLM`` state dict, on every TP/PP rank.

    Collective over the TP and PP groups (every rank must call it). Tensors stay on the model's
    device and dtype; ``parallel_ctx`` is accepted for symmetry (groups come from megatron).
    """
    cfg = cfg or _chunks(models)[0].model_cfg
    sd = canonical_to_hf(gather_canonical(models), cfg)
    if not cfg.untie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


# ----------------------------------------------------------------------------- HF folders


class HFReader:
    """Lazy reader of a HF folder's safetensors (single file or sharded with an index)."""

    def __init__(self, folder: str | Path) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{self.folder}: no model.safetensors(.index.json) found")
        self._handles = [safe_open(str(self.folder / f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}  # noqa: SIM118

    def keys(self) -> list[str]:
        return list(self._where)

    def __call__(self, name: str) -> Tensor:
        if name not in self._where:
            raise KeyError(f"tensor '{name}' is missing from {self.folder}")
        return self._where[name].get_tensor(name)


def save_hf_folder(sd: dict[str, Tensor], cfg: ModelConfig, out: str | Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (tied weights stored once)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if not cfg.untie_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf_config(cfg).save_pretrained(str(out))


# ----------------------------------------------------------------------------- CLI


def hf_to_dsm_main(argv: list[str]) -> int:
    """``dsm convert hf-to-dsm --hf DIR --out DIR [--tp N --pp M]`` (run under torchrun for N*M>1)."""
    ap = argparse.ArgumentParser(prog="dsm convert hf-to-dsm")
    ap.add_argument("--hf", required=True, type=Path, help="Hugging Face Llama folder")
    ap.add_argument("--out", required=True, type=Path, help="dsm checkpoint root to create")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    args = ap.parse_args(argv)
    from dsm_engine.models.build import build_model_chunks
    from dsm_engine.models.checkpoint import save_checkpoint
    from dsm_engine.models.parallel import ParallelConfig, destroy_parallel, initialize_parallel

    cfg = model_config_from_hf(args.hf)
    ctx = initialize_parallel(ParallelConfig(tp=args.tp, pp=args.pp))
    try:
        if ctx.world_size != args.tp * args.pp:
            raise ConfigError(
                f"--tp {args.tp} --pp {args.pp} needs {args.tp * args.pp} processes "
                f"(torchrun --nproc_per_node {args.tp * args.pp}), got {ctx.world_size}"
            )
        models = build_model_chunks(cfg, ctx, init_weights=False)
        load_hf_weights(models, HFReader(args.hf), cfg)
        save_checkpoint(args.out, 0, models, extra={"source": str(args.hf)})
        if ctx.rank == 0:
            copy_tokenizer_files(args.hf, args.out / "tokenizer")
            print(f"wrote {args.out} ({cfg.num_params() / 1e6:.1f}M parameters)")
    finally:
        destroy_parallel()
    return 0


def dsm_to_hf_main(argv: list[str]) -> int:
    """``dsm convert dsm-to-hf --ckpt DIR --out DIR``: safetensors + config + tokenizer files."""
    ap = argparse.ArgumentParser(prog="dsm convert dsm-to-hf")
    ap.add_argument("--ckpt", required=True, type=Path, help="dsm checkpoint root or step folder")
    ap.add_argument("--out", required=True, type=Path, help="Hugging Face folder to write")
    args = ap.parse_args(argv)
    from dsm_engine.models.build import build_model_chunks
    from dsm_engine.models.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import ParallelConfig, destroy_parallel, initialize_parallel

    step_dir = resolve_checkpoint(args.ckpt)
    cfg = model_config(read_meta(step_dir)["model_config"])
    ctx = initialize_parallel(ParallelConfig())
    try:
        models = build_model_chunks(cfg, ctx, init_weights=False)
        load_checkpoint(step_dir, models)
        sd = export_hf_state_dict(models, cfg)
        if ctx.rank == 0:
            save_hf_folder(sd, cfg, args.out)
            tokenizer = checkpoint_tokenizer(step_dir)
            if tokenizer is not None:
                save_hf_tokenizer(tokenizer, args.out)
            else:
                print(
                    f"warning: no tokenizer was saved with {args.ckpt}: {args.out} has none "
                    "(dsm eval --tokenizer PATH supplies it)",
                    file=sys.stderr,
                )
            print(f"wrote {args.out}")
    finally:
        destroy_parallel()
    return 0
