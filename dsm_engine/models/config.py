"""Model architecture config (Llama / DeepSeekMath family) and its mapping onto megatron-core.

``ModelConfig`` is the one typed description of the architecture; :func:`to_transformer_config`
is the only place that turns it (plus a :class:`~dsm_engine.models.parallel.ParallelConfig`)
into megatron-core's ``TransformerConfig``. The architecture is fixed to what DeepSeekMath and
Llama use: pre-norm RMSNorm, rotary position embeddings (half-rotation, like Hugging Face
Llama), SwiGLU MLP, no biases, optional grouped-query attention, untied embeddings by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dsm_engine.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from megatron.core.transformer.transformer_config import TransformerConfig

    from dsm_engine.models.parallel import ParallelConfig

DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class ModelConfig:
    """Architecture of a Llama-style decoder.

    ``num_query_groups`` = number of key/value heads (GQA); ``None`` means multi-head attention
    (as many groups as heads). ``seq_length`` is the training sequence length;
    ``max_position_embeddings`` (default: ``seq_length``) bounds the rotary table.
    """

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int | None = None
    ffn_hidden_size: int = 128
    vocab_size: int = 256
    seq_length: int = 128
    max_position_embeddings: int | None = None
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-6
    init_method_std: float = 0.02
    untie_embeddings: bool = True
    params_dtype: DType = "float32"
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "ffn_hidden_size",
            "vocab_size",
            "seq_length",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                f"ModelConfig.num_attention_heads={self.num_attention_heads}"
            )
        if self.num_query_groups is not None and (
            self.num_query_groups <= 0 or self.num_attention_heads % self.num_query_groups
        ):
            raise ConfigError(
                f"ModelConfig.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"ModelConfig.num_query_groups={self.num_query_groups}"
            )
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (= query groups)."""
        return self.num_query_groups or self.num_attention_heads

    def num_params(self) -> int:
        """Parameter count of the full (unsharded) model."""
        h, f, v = self.hidden_size, self.ffn_hidden_size, self.vocab_size
        qkv = h * (self.num_attention_heads + 2 * self.kv_heads) * self.head_dim
        per_layer = qkv + h * h + 3 * h * f + 2 * h
        emb = v * h * (2 if self.untie_embeddings else 1)
        return self.num_layers * per_layer + emb + h

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # DeepSeekMath 7B (deepseek-ai/deepseek-math-7b-base): a Llama architecture.
    "deepseekmath-7b": ModelConfig(
        num_layers=30,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=None,
        ffn_hidden_size=11008,
        vocab_size=102400,
        seq_length=4096,
        rotary_base=10000.0,
        norm_epsilon=1e-6,
        params_dtype="bfloat16",
    ),
    # ~1.2B parameters with DeepSeekMath's vocabulary: the benchmark size.
    "dsm-1b": ModelConfig(
        num_layers=16,
        hidden_size=2048,
        num_attention_heads=16,
        ffn_hidden_size=5504,
        vocab_size=102400,
        seq_length=4096,
        params_dtype="bfloat16",
    ),
    # Tiny CPU sizes for tests and examples.
    "tiny": ModelConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=128,
        vocab_size=256,
        seq_length=128,
    ),
    "tiny-gqa": ModelConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
        vocab_size=256,
        seq_length=128,
    ),
}


def model_config(name_or_cfg: str | ModelConfig | dict[str, Any], **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a preset name, a config, or a mapping, with field overrides."""
    if isinstance(name_or_cfg, ModelConfig):
        base = dataclasses.asdict(name_or_cfg)
    elif isinstance(name_or_cfg, dict):
        base = dict(name_or_cfg)
    elif isinstance(name_or_cfg, str):
        if name_or_cfg not in MODEL_PRESETS:
            raise ConfigError(
                f"unknown model preset '{name_or_cfg}' (known: {', '.join(sorted(MODEL_PRESETS))})"
            )
        base = dataclasses.asdict(MODEL_PRESETS[name_or_cfg])
    else:
        raise ConfigError(f"model: expected a preset name or ModelConfig, got {name_or_cfg!r}")
    base.update(overrides)
    if "seq_length" in overrides and "max_position_embeddings" not in overrides:
        base["max_position_embeddings"] = None
    from dsm_engine.config import from_dict

    return from_dict(ModelConfig, base)


_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str):
    """The torch dtype named by ``ModelConfig.params_dtype``."""
    import torch

    return getattr(torch, _TORCH_DTYPES[name])


def check_parallel_fit(cfg: ModelConfig, parallel: ParallelConfig) -> None:
    """Raise :class:`ConfigError` naming the field when ``cfg`` cannot be split by ``parallel``."""
    tp, pp = parallel.tp, parallel.pp
    for name, value in (
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_query_groups", cfg.kv_heads),
        ("ffn_hidden_size", cfg.ffn_hidden_size),
        ("vocab_size", cfg.vocab_size),
    ):
        if value % tp:
            raise ConfigError(
                f"ModelConfig.{name}={value} is not divisible by tensor parallel size "
                f"ParallelConfig.tp={tp}"
            )
    stages = pp * (parallel.virtual_pp or 1)
    if cfg.num_layers % stages:
        raise ConfigError(
            f"ModelConfig.num_layers={cfg.num_layers} is not divisible by the number of pipeline "
            f"stages ParallelConfig.pp * virtual_pp = {stages}"
        )
    if parallel.sequence_parallel and cfg.seq_length % tp:
        raise ConfigError(
            f"ModelConfig.seq_length={cfg.seq_length} is not divisible by ParallelConfig.tp={tp} "
            "(needed by sequence_parallel)"
        )


def to_transformer_config(cfg: ModelConfig, parallel: ParallelConfig) -> TransformerConfig:
    """Map ``cfg`` and ``parallel`` onto megatron-core's ``TransformerConfig``.

    Fusions that need apex (gradient accumulation fusion) or TE/apex (rope fusion) stay off.
    megatron-core wraps its SwiGLU and bias-dropout-add fusions in ``torch.compile``: on CUDA
    they save memory traffic and stay on; on the CPU they are off, because Inductor's first
    compile there costs seconds per new shape and ~200 MiB of resident memory for no gain
    (the unfused functions compute the same SwiGLU and residual add).
    """
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    check_parallel_fit(cfg, parallel)
    dtype = torch_dtype(cfg.params_dtype)
    fuse = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.virtual_pp,
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        bias_activation_fusion=fuse,
        bias_dropout_fusion=fuse,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
