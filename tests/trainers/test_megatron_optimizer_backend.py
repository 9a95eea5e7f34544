"""optim.backend=megatron (megatron-core DDP + get_megatron_optimizer) on CPU, fp32, one process.

megatron-core 0.16.1's DDP and fp32 optimizer run on CPU; its bf16 and distributed optimizers
take only CUDA parameters (a clear ConfigError says so). In fp32 the megatron backend must take
exactly the steps of the torch backend: same AdamW, same no-decay groups, same clipping.
"""

from __future__ import annotations

import pytest
import torch

from dsm_engine.config import ConfigError
from dsm_engine.models.build import build_model_chunks
from dsm_engine.models.config import model_config
from dsm_engine.models.parallel import ParallelConfig, initialize_parallel
from dsm_engine.trainers.optim import OptimConfig, wrap_and_build_optimizer
from dsm_engine.trainers.schedules import apply_lr

SEQ, VOCAB = 16, 256


def _tiny_chunks():
    ctx = initialize_parallel(ParallelConfig(), seed=7)
    return build_model_chunks(model_config("tiny", seq_length=SEQ, vocab_size=VOCAB), ctx)


def _train(backend: str, clip_grad: float, init: dict, steps: int = 3) -> tuple[list[float], dict]:
    chunks = _tiny_chunks()
    chunks[0].load_state_dict(init)
    cfg = OptimConfig(backend=backend, clip_grad=clip_grad, weight_decay=0.1)
    chunks, opt, zero_grad = wrap_and_build_optimizer(chunks, cfg, bf16=False)
    gen = torch.Generator().manual_seed(0)
    pos = torch.arange(SEQ)[None].expand(2, SEQ)
    norms = []
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
        apply_lr(opt, 1e-2)
        zero_grad()
        chunks[0](ids, pos, None, labels=ids).float().mean().backward()
        if backend == "megatron":
            chunks[0].config.finalize_model_grads_func(chunks)
        ok, norm, _ = opt.step()
        assert ok
        norms.append(float(norm))
    module = chunks[0].module if backend == "megatron" else chunks[0]
    return norms, {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("clip_grad", [0.05, 0.0], ids=["clipping", "no-clip"])
def test_megatron_backend_takes_the_torch_backend_steps_in_fp32(clip_grad):
    init = _tiny_chunks()[0].state_dict()
    norms_t, params_t = _train("torch", clip_grad, init)
    norms_m, params_m = _train("megatron", clip_grad, init)
    assert params_t.keys() == params_m.keys()
    torch.testing.assert_close(torch.tensor(norms_m), torch.tensor(norms_t), rtol=1e-5, atol=0)
    for name in params_t:
        torch.testing.assert_close(params_m[name], params_t[name], rtol=1e-5, atol=1e-6, msg=name)


def test_megatron_bf16_or_distributed_optimizer_on_cpu_is_a_clear_error():
    chunks = _tiny_chunks()
    with pytest.raises(ConfigError, match="needs CUDA"):
        wrap_and_build_optimizer(chunks, OptimConfig(backend="megatron"), bf16=True)
    cfg = OptimConfig(backend="megatron", distributed_optimizer=True)
    with pytest.raises(ConfigError, match="needs CUDA"):
        wrap_and_build_optimizer(chunks, cfg, bf16=False)
