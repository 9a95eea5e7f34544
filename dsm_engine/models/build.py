"""Build megatron-core ``GPTModel``s for a :class:`ModelConfig` and run them.

Layouts at each boundary:

* ``input_ids``, ``position_ids``: [b, s] (batch first), as everywhere in megatron-core.
* Inside the model and at pipeline-stage boundaries hidden states are [s, b, h] (sequence
  first; [s / tp, b, h] between layers with sequence parallelism).
* :func:`forward_hidden` returns [s, b, h] (full sequence even with sequence parallelism).
* :func:`model_logits` returns [b, s, V] float32, gathered over tensor parallel ranks.
* ``GPTModel.forward(..., labels=[b, s])`` returns the per-token loss [b, s].

Layer spec: transformer-engine's fused norm+linear modules when TE is importable and CUDA is
present, otherwise megatron's Column/RowParallelLinear with the local :class:`RMSNorm`. Core
attention is :class:`~dsm_engine.models.attention.SDPAttention` in both cases, so masks and
packed documents behave the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)
from torch import Tensor

from dsm_engine.models.attention import SDPAttention
from dsm_engine.models.config import ModelConfig, to_transformer_config
from dsm_engine.models.parallel import ParallelConfig, ParallelContext

# Optional transformer-engine fused modules on GPU. megatron-core 0.16.1's TE module imports
# without TE too (it substitutes a MagicMock for ``transformer_engine``), so a successful import
# proves nothing: its own ``HAVE_TE`` says whether TE really loaded. megatron-core 0.16.1 is
# tested with transformer-engine >= 2.9, < 2.12 (its ``dev`` extra).
try:
    from megatron.core.extensions.transformer_engine import HAVE_TE as _MCORE_HAVE_TE
    from megatron.core.extensions.transformer_engine import (
        TELayerNormColumnParallelLinear,
        TENorm,
        TERowParallelLinear,
    )

    HAVE_TE = bool(_MCORE_HAVE_TE)
except Exception:  # noqa: BLE001 - any import failure means "not available"
    HAVE_TE = False


class RMSNorm(torch.nn.Module):
    """RMSNorm computed in float32 like Hugging Face Llama, then scaled by the weight.

    The weight is marked ``sequence_parallel`` so megatron all-reduces its gradient across TP
    ranks when sequence parallelism splits the tokens.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_: object):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


_LN_KEY_MAP = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}


def use_transformer_engine() -> bool:
    """Whether the TE layer spec is used (TE importable and CUDA present)."""
    return HAVE_TE and torch.cuda.is_available()


def layer_spec(te: bool | None = None) -> ModuleSpec:
    """The transformer layer ``ModuleSpec`` (TE fused norm+linear or local modules)."""
    te = use_transformer_engine() if te is None else te
    attn = SelfAttentionSubmodules(
        linear_qkv=TELayerNormColumnParallelLinear if te else ColumnParallelLinear,
        core_attention=SDPAttention,
        linear_proj=TERowParallelLinear if te else RowParallelLinear,
        q_layernorm=IdentityOp,
        k_layernorm=IdentityOp,
    )
    mlp = MLPSubmodules(
        linear_fc1=TELayerNormColumnParallelLinear if te else ColumnParallelLinear,
        linear_fc2=TERowParallelLinear if te else RowParallelLinear,
    )
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp if te else RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=attn,
            ),
            self_attn_bda=_bda(),
            pre_mlp_layernorm=IdentityOp if te else RMSNorm,
            mlp=ModuleSpec(module=MLP, submodules=mlp),
            mlp_bda=_bda(),
            # Checkpoints use TE's names for the norms, so local and TE models share them.
            sharded_state_dict_keys_map={} if te else dict(_LN_KEY_MAP),
        ),
    )


def _bda():
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add

    return get_bias_dropout_add


def block_spec(config: TransformerConfig, vp_stage: int | None = None) -> ModuleSpec:
    """The decoder block spec: this stage's layers and the final norm."""
    te = use_transformer_engine()
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(
            layer_specs=[layer_spec(te)] * n, layer_norm=TENorm if te else RMSNorm
        ),
    )


class DsmGPTModel(GPTModel):
    """``GPTModel`` that can stop before the LM head: ``forward(..., return_hidden=True)``.

    With ``return_hidden`` the last stage returns the final-normed hidden states [s, b, h]
    prepared for a vocab-parallel matmul with :func:`lm_head_weight` (see :func:`forward_hidden`).
    """

    def __init__(self, *args, model_cfg: ModelConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_cfg = model_cfg
        self._return_hidden = False

    def forward(self, input_ids, position_ids, attention_mask, *args, return_hidden=False, **kw):
        self._return_hidden = return_hidden
        try:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kw)
        finally:
            self._return_hidden = False

    def _postprocess(self, hidden_states, *args, **kwargs):
        if self._return_hidden and self.post_process:
            return _hidden_for_lm_head(hidden_states, self.config)
        return super()._postprocess(hidden_states, *args, **kwargs)


def _hidden_for_lm_head(hidden: Tensor, config: TransformerConfig) -> Tensor:
    # The fused lm_head kernels (dsm_engine.kernels) all-reduce their partial input gradient
    # over TP themselves, so hidden's gradient arrives whole on every rank: under SP each rank
    # keeps its own sequence slice of it; without SP it passes as is. (megatron's
    # copy_to_tensor_model_parallel_region would all-reduce it a second time; its all-reduce
    # only missed because it runs on a contiguous copy of a transposed gradient, except with
    # one row per microbatch, where the gradient below the lm_head came out doubled.)
    if config.sequence_parallel:
        return tensor_parallel.gather_from_sequence_parallel_region(
            hidden, tensor_parallel_output_grad=False
        )
    return hidden


def _parallel_config(parallel: ParallelContext | ParallelConfig | None) -> ParallelConfig:
    if parallel is None:
        return ParallelConfig()
    if isinstance(parallel, ParallelContext):
        return parallel.config
    return parallel


def build_model(
    model_cfg: ModelConfig,
    parallel: ParallelContext | ParallelConfig | None = None,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    init_weights: bool = True,
    model_class: type[DsmGPTModel] | None = None,
    tie_embeddings: bool | None = None,
) -> DsmGPTModel:
    """Build this rank's ``GPTModel`` (its pipeline stage, its TP shard) on the local device.

    Needs :func:`~dsm_engine.models.parallel.initialize_parallel` first. ``pre_process`` /
    ``post_process`` default to whether this is the first / last pipeline stage (of
    ``vp_stage`` under virtual pipelining). ``init_weights=False`` skips random init (for loading).
    ``model_class`` (a ``DsmGPTModel`` subclass, e.g. the reward model) and ``tie_embeddings``
    (default: ``not model_cfg.untie_embeddings``) let other heads reuse this construction.
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_model: call dsm_engine.models.initialize_parallel(...) first")
    if tie_embeddings is None:
        tie_embeddings = not model_cfg.untie_embeddings
    pcfg = _parallel_config(parallel)
    config = to_transformer_config(model_cfg, pcfg)
    config.perform_initialization = init_weights
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(
            ignore_virtual=False, vp_stage=vp_stage
        )
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(
            ignore_virtual=False, vp_stage=vp_stage
        )
    model = (model_class or DsmGPTModel)(
        config=config,
        transformer_layer_spec=block_spec(config, vp_stage),
        vocab_size=model_cfg.vocab_size,
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=tie_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=model_cfg.rotary_base,
        vp_stage=vp_stage,
        model_cfg=model_cfg,
    )
    device = (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    )
    if device is not None:
        model.to(device)
    return model


def set_activation_recompute(chunks: Sequence[torch.nn.Module], mode: str) -> None:
    """``train.recompute`` on built chunks: ``"full"`` keeps only each transformer layer's
    input and recomputes the layer in backward (megatron-core's full, uniform recompute of one
    layer at a time: Hugging Face's gradient checkpointing); ``"none"`` keeps every
    activation."""
    if mode not in ("none", "full"):
        raise ValueError(f"train.recompute must be 'none' or 'full', got {mode!r}")
    for chunk in chunks:
        config = _unwrap(chunk).config
        if mode == "full":
            config.recompute_granularity = "full"
            config.recompute_method = "uniform"
            config.recompute_num_layers = 1
        else:
            config.recompute_granularity = config.recompute_method = None
            config.recompute_num_layers = None


def build_model_chunks(
    model_cfg: ModelConfig, parallel: ParallelContext | ParallelConfig | None = None, **kw
) -> list[DsmGPTModel]:
    """One model chunk per virtual pipeline stage (a one-item list without virtual pp)."""
    vpp = _parallel_config(parallel).virtual_pp
    if not vpp:
        return [build_model(model_cfg, parallel, **kw)]
    return [build_model(model_cfg, parallel, vp_stage=i, **kw) for i in range(vpp)]


def layer_offset(model: GPTModel) -> int:
    """Global index of this chunk's first transformer layer."""
    return get_transformer_layer_offset(model.config, vp_stage=model.vp_stage)


def _unwrap(model: torch.nn.Module) -> DsmGPTModel:
    while not isinstance(model, GPTModel) and hasattr(model, "module"):
        model = model.module
    return model  # type: ignore[return-value]


def lm_head_weight(model: torch.nn.Module) -> Tensor:
    """This TP rank's LM head weight [V / tp, h] (the embedding when weights are tied)."""
    m = _unwrap(model)
    if not m.post_process:
        raise ValueError("lm_head_weight: this pipeline stage has no LM head (post_process=False)")
    if m.share_embeddings_and_output_weights:
        return m.shared_embedding_or_output_weight()
    return m.output_layer.weight


def _default_positions(input_ids: Tensor) -> Tensor:
    b, s = input_ids.shape
    return torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)


def forward_hidden(
    model: torch.nn.Module,
    input_ids: Tensor,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Final-normed hidden states [s, b, h] for ``input_ids`` [b, s] (single pipeline stage).

    ``hidden @ lm_head_weight(model).T`` gives the vocab-parallel logits [s, b, V / tp]. Its
    gradient must arrive whole on every TP rank, as the fused log-prob kernels give it (they
    all-reduce their partial input gradients); under sequence parallelism each rank keeps
    its slice of it. A plain matmul consumer must all-reduce its input gradient itself.
    """
    m = _unwrap(model)
    if not (m.pre_process and m.post_process):
        raise ValueError("forward_hidden needs the whole model on one stage; use the pp schedule")
    if position_ids is None:
        position_ids = _default_positions(input_ids)
    return model(input_ids, position_ids, attention_mask, return_hidden=True)


def model_logits(
    model: torch.nn.Module,
    input_ids: Tensor,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Logits [b, s, V] float32, gathered over TP (single pipeline stage)."""
    m = _unwrap(model)
    if not (m.pre_process and m.post_process):
        raise ValueError("model_logits needs the whole model on one stage (pp=1)")
    if position_ids is None:
        position_ids = _default_positions(input_ids)
    logits = model(input_ids, position_ids, attention_mask)  # [b, s, V/tp]
    logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    return logits.float()


@torch.no_grad()
def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """π_ref ← π_θ: copy every parameter of ``src`` into ``dst`` (same layout)."""
    d, s = _unwrap(dst).state_dict(), _unwrap(src).state_dict()
    for k, v in s.items():
        if torch.is_tensor(v) and k in d and torch.is_tensor(d[k]):
            d[k].copy_(v)
