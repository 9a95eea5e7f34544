"""The options of the loss ops: frozen dataclasses, validated once when they are built.

``GRPOLossOptions`` says what the GRPO loss computes (``grpo_loss``, ``grpo_loss_ref`` and the
loss of ``fused_linear_grpo_loss``); ``HeadOptions`` how the fused lm_head ops walk the
vocabulary and where they sum the weight's gradient (``fused_linear_logprobs`` and
``fused_linear_grpo_loss``). The ops take the objects (``options=``, ``head=``) or, as before,
their fields as keywords; ``split_keywords`` and ``from_keywords`` turn those keywords into the
objects, here and nowhere else. Past that point the objects travel unchanged: to the PyTorch
path, to the Triton path (which flattens them into the kernels' scalars in one place,
``grpo_loss_triton.grpo_loss_rows``) and to the fused head's chunk loops.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from ._dispatch import check_positive_int, check_temperature

LossAgg = Literal[
    "seq-mean-token-mean",
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
LOSS_AGGS: tuple[str, ...] = get_args(LossAgg)
ADV_EPS = 1e-6
GradWeightAccum = Literal["auto", "fp32", "param", "main_grad"]
GRAD_WEIGHT_ACCUM: tuple[str, ...] = get_args(GradWeightAccum)


def _real(name: str, value: object, *, finite: bool = True) -> float:
    """``value`` as a float; ValueError naming ``name`` for NaN, a non-number or (with
    ``finite``) an infinity."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if real else math.nan  # type: ignore[arg-type]
    if math.isnan(x) or (finite and math.isinf(x)):
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number, got {value!r}")
    return x


@dataclass(frozen=True)
class GRPOLossOptions:
    """What the GRPO loss computes. Per token
    ``l = -min(r*A, clip(r, 1 - clip_eps_low, 1 + clip_eps_high)*A) + beta*k3``; the loss is
    ``sum w*l`` with weights chosen by ``loss_agg``.

    clip_eps_low, clip_eps_high: the ratio's clip range (each >= 0; ``inf`` disables a side).
    beta: weight of the k3 KL penalty.
    loss_agg: one of ``LOSS_AGGS`` (see ``grpo_loss``).
    max_len: ``L`` of ``seq-mean-token-sum-norm`` (None: the padded length ``T``).
    group_size: rows per group when the advantages come from ``rewards`` (required then; an
        error with ``advantages``).
    adv_eps: ``eps`` of the reward normalisation ``(r - mean) / (std + eps)``.
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    beta: float = 0.04
    loss_agg: LossAgg = "seq-mean-token-mean"
    max_len: int | None = None
    group_size: int | None = None
    adv_eps: float = ADV_EPS

    def __post_init__(self) -> None:
        for name in ("clip_eps_low", "clip_eps_high"):  # inf: no clipping on that side
            eps = _real(name, getattr(self, name), finite=False)
            if not eps >= 0:
                raise ValueError(f"{name} must be >= 0, got {eps!r}")
            object.__setattr__(self, name, eps)
        object.__setattr__(self, "beta", _real("beta", self.beta))
        adv_eps = _real("adv_eps", self.adv_eps)
        if not adv_eps > 0:
            raise ValueError(f"adv_eps must be > 0, got {adv_eps!r}")
        object.__setattr__(self, "adv_eps", adv_eps)
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        for name in ("max_len", "group_size"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))


@dataclass(frozen=True)
class HeadOptions:
    """How a fused lm_head op walks the vocabulary and sums the weight's gradient.

    temperature: logits are divided by it (positive, finite).
    token_chunk, vocab_chunk: token rows and vocabulary rows (of ``weight``) per chunk; None
        picks them by the memory budget (``default_chunk_sizes``; a missing one is filled from
        the budget). ``vocab_chunk >= V_local`` disables vocabulary chunks.
    grad_weight_accum: where ``grad_weight`` is summed over token chunks (``fused_linear``'s
        module docstring): ``"fp32"`` an fp32 ``(V_local, H)`` buffer rounded once,
        ``"param"`` the weight's dtype (no extra memory, one rounding per chunk),
        ``"main_grad"`` straight into the weight's fp32 ``main_grad`` (megatron-core's DDP
        sets it; no extra memory, no rounding), ``"auto"``: ``"main_grad"`` when the weight
        has one, else ``"fp32"`` for a bf16/fp16 weight with more than one token chunk, else
        ``"param"``.
    """

    temperature: float = 1.0
    token_chunk: int | None = None
    vocab_chunk: int | None = None
    grad_weight_accum: GradWeightAccum = "auto"

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        object.__setattr__(self, "temperature", float(self.temperature))
        for name in ("token_chunk", "vocab_chunk"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.grad_weight_accum not in GRAD_WEIGHT_ACCUM:
            raise ValueError(
                f"grad_weight_accum must be one of {GRAD_WEIGHT_ACCUM}, "
                f"got {self.grad_weight_accum!r}"
            )


Options = TypeVar("Options", GRPOLossOptions, HeadOptions)


def split_keywords(keywords: dict[str, Any], *kinds: type) -> list[dict[str, Any]]:
    """``keywords`` split by the options class whose field each one names (in ``kinds``
    order); TypeError for a keyword that is no field of any of them, as Python gives for an
    unknown argument."""
    parts: list[dict[str, Any]] = [{} for _ in kinds]
    fields = [{f.name for f in dataclasses.fields(k)} for k in kinds]
    for key, value in keywords.items():
        owner = next((i for i, names in enumerate(fields) if key in names), None)
        if owner is None:
            known = ", ".join(sorted(set().union(*fields)))
            raise TypeError(f"unexpected keyword argument {key!r} (option keywords: {known})")
        parts[owner][key] = value
    return parts


def from_keywords(
    kind: type[Options], given: Options | None, keywords: dict[str, Any], *, name: str
) -> Options:
    """``given``, or a ``kind`` built from ``keywords`` (its fields, as the ops accepted them
    before the options objects existed). Passing both is a ValueError naming ``name``."""
    if given is None:
        return kind(**keywords)
    if not isinstance(given, kind):
        raise TypeError(f"{name} must be a {kind.__name__}, got {type(given).__name__}")
    if keywords:
        raise ValueError(
            f"pass {name}={kind.__name__}(...) or its fields as keywords, not both "
            f"(got {', '.join(sorted(keywords))})"
        )
    return given
