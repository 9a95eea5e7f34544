"""The loss ops' options objects: validated once, frozen, and the same as the keywords."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dsm_engine.kernels import (
    GRPOLossOptions,
    HeadOptions,
    fused_linear_grpo_loss,
    fused_linear_logprobs,
    grpo_loss,
    grpo_loss_ref,
)

B, T, H, V = 4, 5, 8, 30


def _inputs():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    old = torch.randn(B, T, generator=gen) - 3.0
    ref = torch.randn(B, T, generator=gen) - 3.0
    mask = torch.rand(B, T, generator=gen) > 0.2
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    return hidden, weight, targets, old, ref, mask, rewards


LOSS = dict(clip_eps_low=0.1, clip_eps_high=0.3, beta=0.02, loss_agg="token-mean", group_size=2)
HEAD = dict(temperature=0.7, token_chunk=3, vocab_chunk=16, grad_weight_accum="param")


@pytest.mark.parametrize("op", [grpo_loss, grpo_loss_ref])
def test_options_object_equals_its_fields_as_keywords(op):
    _, _, _, old, ref, mask, rewards = _inputs()
    logp = old + 0.1
    by_object = op(logp, old, ref, mask, rewards=rewards, options=GRPOLossOptions(**LOSS))
    by_keywords = op(logp, old, ref, mask, rewards=rewards, **LOSS)
    assert torch.equal(by_object[0], by_keywords[0])
    assert all(torch.equal(by_object[1][k], by_keywords[1][k]) for k in by_keywords[1])


def test_fused_loss_takes_both_objects_or_their_keywords():
    hidden, weight, targets, old, ref, mask, rewards = _inputs()
    args = (hidden, weight, targets, old, ref, mask)
    by_object = fused_linear_grpo_loss(
        *args, rewards=rewards, options=GRPOLossOptions(**LOSS), head=HeadOptions(**HEAD)
    )
    mixed = fused_linear_grpo_loss(*args, rewards=rewards, options=GRPOLossOptions(**LOSS), **HEAD)
    by_keywords = fused_linear_grpo_loss(*args, rewards=rewards, **LOSS, **HEAD)
    assert torch.equal(by_object[0], by_keywords[0]) and torch.equal(mixed[0], by_keywords[0])
    logp_object = fused_linear_logprobs(
        hidden.view(-1, H), weight, targets.view(-1), head=HeadOptions(**HEAD)
    )
    logp_keywords = fused_linear_logprobs(hidden.view(-1, H), weight, targets.view(-1), **HEAD)
    assert torch.equal(logp_object, logp_keywords)


def test_an_object_and_its_keywords_together_raise():
    _, _, _, old, ref, mask, rewards = _inputs()
    with pytest.raises(ValueError, match="not both"):
        grpo_loss(old, old, ref, mask, rewards=rewards, options=GRPOLossOptions(), group_size=2)
    hidden, weight, targets, *_ = _inputs()
    with pytest.raises(ValueError, match="not both"):
        fused_linear_logprobs(
            hidden.view(-1, H), weight, targets.view(-1), head=HeadOptions(), temperature=2.0
        )


def test_unknown_keyword_raises_type_error_naming_it():
    hidden, weight, targets, old, ref, mask, rewards = _inputs()
    with pytest.raises(TypeError, match="'eps_low'"):
        fused_linear_grpo_loss(
            hidden, weight, targets, old, ref, mask, rewards=rewards, group_size=2, eps_low=0.1
        )
    with pytest.raises(TypeError, match="options must be a GRPOLossOptions"):
        grpo_loss(old, old, ref, mask, rewards=rewards, options=HeadOptions())


@pytest.mark.parametrize(
    "kind, change, match",
    [
        (GRPOLossOptions, dict(clip_eps_low=-0.1), "clip_eps_low must be >= 0"),
        (GRPOLossOptions, dict(clip_eps_high=float("nan")), "clip_eps_high must be a number"),
        (GRPOLossOptions, dict(beta=float("inf")), "beta must be a finite number"),
        (GRPOLossOptions, dict(beta="0.1"), "beta must be a finite number"),
        (GRPOLossOptions, dict(loss_agg="sum"), "loss_agg must be one of"),
        (GRPOLossOptions, dict(max_len=0), "max_len must be a positive int"),
        (GRPOLossOptions, dict(group_size=True), "group_size must be a positive int"),
        (GRPOLossOptions, dict(adv_eps=0.0), "adv_eps must be > 0"),
        (HeadOptions, dict(temperature=0.0), "temperature must be a positive finite number"),
        (HeadOptions, dict(token_chunk=2.5), "token_chunk must be a positive int"),
        (HeadOptions, dict(vocab_chunk=-1), "vocab_chunk must be a positive int"),
        (HeadOptions, dict(grad_weight_accum="bf16"), "grad_weight_accum must be one of"),
    ],
)
def test_bad_option_raises_value_error_naming_it_when_built(kind, change, match):
    with pytest.raises(ValueError, match=match):
        kind(**change)


def test_options_are_frozen_and_normalised():
    options = GRPOLossOptions(beta=1, clip_eps_high=float("inf"))  # inf: no upper clip
    assert options.beta == 1.0 and type(options.beta) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beta = 0.5  # type: ignore[misc]
    assert dataclasses.replace(options, beta=0.0).beta == 0.0
