"""``grad_weight_accum="main_grad"`` under megatron-core's DistributedDataParallel (CPU, gloo).

The fused GRPO loss adds the lm_head weight's gradient straight into the fp32 ``main_grad``
that DDP gives the weight: it equals the float64 reference, no ``(V, H)`` buffer is allocated,
and DDP's backward hook neither adds it a second time nor loses another layer's gradient of
the same weight (tied embeddings), with and without ``overlap_grad_reduce``. ``"auto"`` picks
this mode whenever the weight has a ``main_grad``: it is what the GRPO trainer runs under
megatron's DDP.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_checks import assert_close_to_ref
from _memory_checks import PeakLiveElements

from dsm_engine.kernels import fused_linear_grpo_loss, fused_linear_grpo_loss_ref

B, T, H = 4, 16, 256
V = 256  # the tiny preset's vocabulary
TOKEN_CHUNK = 4  # 16 token chunks


@pytest.fixture()
def ddp_model(request):
    """A tiny megatron GPT (fp32, CPU) wrapped in megatron's DDP; ``request.param`` =
    ``(untie_embeddings, overlap_grad_reduce)``."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from dsm_engine.models import ParallelConfig, build_model, initialize_parallel
    from dsm_engine.models.config import model_config
    from dsm_engine.models.parallel import destroy_parallel

    untie, overlap = request.param
    ctx = initialize_parallel(ParallelConfig(), seed=1)
    torch.manual_seed(0)
    model = build_model(model_config("tiny", hidden_size=H, untie_embeddings=untie), ctx)
    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=overlap)
    yield DistributedDataParallel(model.config, ddp_cfg, model)
    destroy_parallel()


def _problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (B, T), generator=gen)
    old = torch.randn(B, T, generator=gen) * 0.3 - 5.5
    ref = torch.randn(B, T, generator=gen) * 0.3 - 5.5
    mask = torch.rand(B, T, generator=gen) > 0.2
    adv = torch.randn(B, generator=gen)
    return targets, old, ref, mask, adv


def _backward(hidden, weight, problem, mode: str, **kw) -> None:
    """The fused GRPO loss of ``problem`` in 16 token chunks, and its backward."""
    targets, old, ref, mask, adv = problem
    loss, _ = fused_linear_grpo_loss(
        hidden,
        weight,
        targets,
        old,
        ref,
        mask,
        advantages=adv,
        token_chunk=TOKEN_CHUNK,
        grad_weight_accum=mode,
        **kw,
    )
    loss.backward()


def _weight(ddp):
    from dsm_engine.models.build import lm_head_weight

    return lm_head_weight(ddp)


@pytest.mark.parametrize("ddp_model", [(True, False)], indirect=True)
@pytest.mark.parametrize("mode", ["auto", "param"])
def test_main_grad_equals_fp64_and_no_weight_sized_buffer_is_allocated(ddp_model, mode):
    """``auto`` (= ``main_grad`` here) against ``param`` (the default for an fp32 weight
    before main_grad existed, whose gradient buffer DDP's hook then adds into main_grad)."""
    weight = _weight(ddp_model)
    assert weight.main_grad.dtype == torch.float32
    problem = _problem(1)
    targets, old, ref, mask, adv = problem
    hidden = torch.randn(B, T, H, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ddp_model.zero_grad_buffer()
    with PeakLiveElements(
        in_bytes=True, inputs=(hidden, weight, weight.main_grad, *problem)
    ) as rec:
        _backward(hidden, weight, problem, mode, impl="torch")
    ddp_model.finish_grad_sync()
    assert weight.grad is None  # DDP's hook took what .grad held and cleared it

    hr = hidden.detach().double().requires_grad_()
    wr = weight.detach().double().requires_grad_()
    loss_r, _ = fused_linear_grpo_loss_ref(
        hr, wr, targets, old.double(), ref.double(), mask, advantages=adv.double()
    )
    loss_r.backward()
    assert_close_to_ref("main_grad", weight.main_grad, wr.grad, wr.grad, torch.float32)
    assert_close_to_ref("grad_hidden", hidden.grad, hr.grad, hr.grad, torch.float32)

    weight_bytes = V * H * 4
    grads = B * T * H * 4  # hidden.grad; the weight's gradient lives in main_grad
    # A chunk's logits and the PyTorch primitives' softmax temporaries, O(N) vectors.
    slack = 8 * 4 * TOKEN_CHUNK * V + 64 * 4 * B * T
    assert slack < weight_bytes / 3
    if mode == "auto":
        assert rec.peak <= grads + slack, rec.peak
    else:  # the recorder sees a weight-sized buffer when there is one
        assert rec.peak >= grads + weight_bytes, rec.peak


@pytest.mark.parametrize("ddp_model", [(True, False)], indirect=True)
@pytest.mark.parametrize(
    "chunks",
    [{"token_chunk": TOKEN_CHUNK}, {"token_chunk": TOKEN_CHUNK, "vocab_chunk": 64}],
    ids=["one-pass", "vocab-slices"],
)
def test_grad_scale_puts_the_scaled_gradient_into_main_grad_during_forward(ddp_model, chunks):
    """With ``grad_scale`` the forward adds ``grad_scale`` times the weight's gradient to what
    ``main_grad`` held, and the backward that brings that gradient gives the hidden states
    theirs: both equal the float64 reference's, and no weight-sized buffer is allocated."""
    weight = _weight(ddp_model)
    targets, old, ref, mask, adv = problem = _problem(5)
    hidden = torch.randn(B, T, H, generator=torch.Generator().manual_seed(6), requires_grad=True)
    ddp_model.zero_grad_buffer()
    weight.main_grad.fill_(0.5)  # an earlier microbatch's gradient, kept
    scale = 0.375
    with PeakLiveElements(
        in_bytes=True, inputs=(hidden, weight, weight.main_grad, *problem)
    ) as rec:
        loss, _ = fused_linear_grpo_loss(
            hidden, weight, targets, old, ref, mask, advantages=adv, grad_scale=scale, **chunks
        )
        (loss * scale).backward()
    ddp_model.finish_grad_sync()

    hr = hidden.detach().double().requires_grad_()
    wr = weight.detach().double().requires_grad_()
    loss_r, _ = fused_linear_grpo_loss_ref(
        hr, wr, targets, old.double(), ref.double(), mask, advantages=adv.double()
    )
    (loss_r * scale).backward()
    torch.testing.assert_close(loss.double(), loss_r, rtol=1e-5, atol=1e-7)
    assert_close_to_ref("main_grad", weight.main_grad, wr.grad + 0.5, wr.grad, torch.float32)
    assert_close_to_ref("grad_hidden", hidden.grad, hr.grad, hr.grad, torch.float32)
    slack = 8 * 4 * TOKEN_CHUNK * V + 64 * 4 * B * T
    assert rec.peak <= B * T * H * 4 + slack, rec.peak


@pytest.mark.parametrize("ddp_model", [(True, False)], indirect=True)
def test_a_backward_that_brings_another_gradient_than_grad_scale_raises(ddp_model):
    weight = _weight(ddp_model)
    targets, old, ref, mask, adv = _problem(7)
    hidden = torch.randn(B, T, H, requires_grad=True)
    loss, _ = fused_linear_grpo_loss(
        hidden, weight, targets, old, ref, mask, advantages=adv, grad_scale=1.0
    )
    with pytest.raises(RuntimeError, match=r"grad_scale=1\.0.*received a gradient of 2\.0"):
        (2 * loss).backward()


def _model_step(ddp, mode: str, seed: int) -> torch.Tensor:
    """Two full forward/backward passes of the whole model (the lm_head through the fused
    loss); the weight's main_grad after the second, copied."""
    from dsm_engine.models.build import forward_hidden

    weight = _weight(ddp)
    problem = _problem(seed)
    for _ in range(2):  # DDP's first batch records which hooks fire; the second checks it
        ddp.zero_grad_buffer()
        hidden = forward_hidden(ddp, problem[0]).transpose(0, 1)  # [s, b, h] -> (B, T, H)
        _backward(hidden, weight, problem, mode)
        ddp.finish_grad_sync()
        assert weight.grad is None
    return weight.main_grad.clone()


@pytest.mark.parametrize(
    "ddp_model",
    [(False, False), (False, True), (True, True)],
    ids=["tied", "tied-overlap", "untied-overlap"],
    indirect=True,
)
def test_ddp_hook_adds_other_gradients_once_and_finds_a_gradient_under_overlap(ddp_model):
    """With tied embeddings the input embedding's gradient reaches main_grad through DDP's
    hook beside ours; with ``overlap_grad_reduce`` the hook needs ``.grad`` set. The result
    equals the ``fp32`` mode's, whose (V, H) gradient DDP's hook adds the usual way."""
    got = _model_step(ddp_model, "main_grad", seed=3)
    want = _model_step(ddp_model, "fp32", seed=3)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("ddp_model", [(True, False)], indirect=True)
def test_the_grpo_step_sums_the_lm_head_gradient_into_main_grad(ddp_model, monkeypatch):
    """The GRPO trainer's update (``accumulate_grads``, default config) under megatron's DDP
    runs ``"main_grad"`` and gives the lm_head the gradient that the same step gives an
    unwrapped copy of the model in ``.grad``."""
    from dsm_engine.grpo.batch import build_batch
    from dsm_engine.grpo.config import GRPOAlgoConfig
    from dsm_engine.grpo.step import accumulate_grads
    from dsm_engine.kernels import _head, group_advantages
    from dsm_engine.models import build_model
    from dsm_engine.models.config import model_config

    real_mode, modes = _head.grad_weight_mode, []

    def spy(*args):  # records the mode each fused call resolves to
        modes.append(real_mode(*args))
        return modes[-1]

    monkeypatch.setattr(_head, "grad_weight_mode", spy)

    gen = torch.Generator().manual_seed(4)
    group, rows = 2, 4
    prompts = [torch.randint(3, V, (3,), generator=gen).tolist() for _ in range(rows)]
    responses = [torch.randint(3, V, (n,), generator=gen).tolist() for n in (5, 2, 7, 4)]
    rewards = [1.0, 0.0, 0.0, 1.0]
    batch = build_batch(
        prompts, responses, [[0.0] * len(r) for r in responses], rewards, [True] * rows, pad_id=0
    )
    old = -5.5 + 0.3 * torch.randn(batch.mask.shape, generator=gen)
    ref = -5.5 + 0.3 * torch.randn(batch.mask.shape, generator=gen)
    adv = group_advantages(batch.rewards, group)
    cfg = GRPOAlgoConfig(group_size=group, micro_batch_size=2)
    assert cfg.grad_weight_accum == "auto"

    plain = build_model(model_config("tiny", hidden_size=H), None)
    plain.load_state_dict(ddp_model.module.state_dict())
    ddp_model.zero_grad_buffer()
    accumulate_grads(ddp_model, batch, old, ref, adv, cfg, temperature=1.0)
    ddp_model.finish_grad_sync()
    assert modes and set(modes) == {"main_grad"}
    modes.clear()
    accumulate_grads(plain, batch, old, ref, adv, cfg, temperature=1.0)
    assert set(modes) == {"param"}  # an fp32 weight without main_grad

    got, want = _weight(ddp_model).main_grad, _weight(plain).grad
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
