"""Worker for tests/trainers/test_tied_embedding_pp.py (``torchrun --nproc_per_node 2``, gloo).

Trains a tiny model with tied input/output embeddings for a few AdamW steps from one set of
initial weights, once per (layout, optimizer backend): pp=1 (dp=2, both ranks fed the same
microbatches, so the DP average is the single-replica gradient) and pp=2 (the first stage holds
the word embedding, the last stage megatron-core's copy of it as the output layer). Records the
loss and grad norm of every step and, at the end, the embedding weight and the last stage's
output-layer copy. Rank 0 saves everything with ``torch.save`` to the path given as argv[1].
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

B, S, MICRO, VOCAB, STEPS, LR, CLIP = 2, 16, 2, 256, 4, 1e-2, 0.5


def _batches(step: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for _ in range(MICRO):
        ids = torch.randint(0, VOCAB, (B, S + 1), generator=g)
        out.append({"tokens": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous()})
    return out


def _model_cfg():
    from dsm_engine.models.config import model_config

    return model_config("tiny", seq_length=S, vocab_size=VOCAB, untie_embeddings=False)


def _initial_weights() -> dict[str, torch.Tensor]:
    """HF-named weights of a pp=1 tiny model (identical on both ranks: same seed)."""
    from dsm_engine.models.build import build_model_chunks
    from dsm_engine.models.convert import canonical_to_hf, gather_canonical
    from dsm_engine.models.parallel import ParallelConfig, initialize_parallel

    ctx = initialize_parallel(ParallelConfig(), seed=11)
    chunks = build_model_chunks(_model_cfg(), ctx)
    return {
        k: v.clone() for k, v in canonical_to_hf(gather_canonical(chunks), _model_cfg()).items()
    }


def _forward_step(model_scale: float):
    pos = torch.arange(S)[None].expand(B, S)

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        out = model(mb["tokens"], pos, None, labels=mb["labels"])

        def loss_func(token_loss: torch.Tensor):
            loss = token_loss.float().mean()
            return loss * model_scale, {"loss": loss.detach()}

        return out, loss_func

    return forward_step


def _train(pp: int, backend: str, init: dict[str, torch.Tensor]) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from dsm_engine.models.build import _unwrap, build_model_chunks, lm_head_weight
    from dsm_engine.models.convert import load_hf_weights
    from dsm_engine.models.parallel import ParallelConfig, initialize_parallel
    from dsm_engine.trainers.optim import OptimConfig, wrap_and_build_optimizer
    from dsm_engine.trainers.schedules import apply_lr

    ctx = initialize_parallel(ParallelConfig(pp=pp), seed=11)
    chunks = build_model_chunks(_model_cfg(), ctx)
    load_hf_weights(chunks, init.__getitem__, _model_cfg())
    cfg = OptimConfig(backend=backend, clip_grad=CLIP, weight_decay=0.1)
    chunks, opt, zero_grad = wrap_and_build_optimizer(chunks, cfg, bf16=False)
    fwd_bwd = get_forward_backward_func()
    losses, norms = [], []
    for step in range(STEPS):
        apply_lr(opt, LR)
        zero_grad()
        reduced = fwd_bwd(
            forward_step_func=_forward_step(1.0 / MICRO),
            data_iterator=iter(_batches(step)),
            model=chunks[0],
            num_microbatches=MICRO,
            seq_length=S,
            micro_batch_size=B,
            forward_only=False,
        )
        ok, norm, _ = opt.step()
        assert ok
        loss = torch.tensor([sum(float(r["loss"]) for r in reduced) / MICRO if reduced else 0.0])
        dist.all_reduce(loss, group=ctx.pp_group)  # only the last stage has it
        losses.append(float(loss))
        norms.append(float(norm))

    model = _unwrap(chunks[0])
    # rank 0 is always on the first stage: it holds the word embedding
    embedding = (
        model.embedding.word_embeddings.weight.detach().clone() if ctx.pp_rank == 0 else None
    )
    # the output layer of the last stage (world rank 1 at pp=2, rank 0 at pp=1)
    out = lm_head_weight(model).detach().clone() if model.post_process else None
    if pp > 1:
        buf = out if ctx.rank == 1 else torch.empty_like(embedding)
        dist.broadcast(buf, src=1)
        out = buf
    return {"losses": losses, "norms": norms, "embedding": embedding, "output": out}


def main() -> None:
    from dsm_engine.models.parallel import destroy_parallel

    init = _initial_weights()
    results = {}
    for pp in (1, 2):
        for backend in ("torch", "megatron"):
            results[f"pp{pp}-{backend}"] = _train(pp, backend, init)
    if dist.get_rank() == 0:
        torch.save(results, sys.argv[1])
    destroy_parallel()


if __name__ == "__main__":
    main()
