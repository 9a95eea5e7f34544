"""Worker for tests/models/test_parallel.py, launched with ``torchrun --nproc_per_node 2``.

One launch checks several layouts (torchrun start-up is the slow part):

1. TP=1/PP=1 (dp=2) reference: logits, loss and full gradients of tiny models imported from
   Hugging Face folders; HF parity of the logits.
2. TP=2: the same quantities, HF parity, bit-exact export; saves a checkpoint.
3. PP=2: the same through the 1F1B pipeline schedule; bit-exact export; loads the TP=2
   checkpoint into a freshly initialised PP=2 model (resharding) and checks its logits.

Rank 0 writes every measured difference to the JSON file given as ``--out``; the test asserts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

B, S, MICRO = 2, 16, 2  # micro batch size, sequence length, number of micro batches


def batches(vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(MICRO):
        ids = torch.randint(0, vocab, (B, S + 1), generator=g)
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return out


def run_schedule(model, data, forward_only: bool):
    """Logits (forward_only) or loss via megatron's schedule; returns last stage's outputs."""
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def step(it, model):
        ids, labels = next(it)
        pos = torch.arange(S).unsqueeze(0).expand(B, S)
        out = model(ids, pos, None, labels=None if forward_only else labels)

        def loss_fn(output):
            if forward_only:
                logits = tensor_parallel.gather_from_tensor_model_parallel_region(output)
                return torch.zeros(()), {"logits": logits.detach().float()}
            loss = output.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_fn

    fb = get_forward_backward_func()
    return fb(
        forward_step_func=step,
        data_iterator=iter(data),
        model=[model],
        num_microbatches=MICRO,
        seq_length=S,
        micro_batch_size=B,
        forward_only=forward_only,
    )


def measure(model, cfg, data) -> dict:
    """logits [MICRO*B, S, V], mean loss and canonical full grads (None where not last stage)."""
    from dsm_engine.models.convert import gather_canonical

    model.eval()
    with torch.no_grad():
        fwd = run_schedule(model, data, forward_only=True)
    model.train()
    model.zero_grad(set_to_none=True)
    train = run_schedule(model, data, forward_only=False)
    grads = gather_canonical(model, grads=True)
    return {
        "logits": torch.cat([d["logits"] for d in fwd]) if fwd else None,
        "loss": torch.stack([d["loss"] for d in train]).mean() if train else None,
        "grads": grads,
    }


def grad_norm(grads: dict) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", nargs="+", required=True, help="name=folder of HF tiny models")
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    from transformers import LlamaForCausalLM

    from dsm_engine.models.build import build_model
    from dsm_engine.models.checkpoint import load_checkpoint, save_checkpoint
    from dsm_engine.models.convert import (
        HFReader,
        export_hf_state_dict,
        load_hf_weights,
        model_config_from_hf,
    )
    from dsm_engine.models.parallel import ParallelConfig, destroy_parallel, initialize_parallel

    folders = dict(item.split("=", 1) for item in args.hf)
    results: dict[str, float | bool] = {}
    ref: dict[str, dict] = {}
    hf_logits: dict[str, torch.Tensor] = {}

    for layout in ("tp1", "tp2", "pp2"):
        pcfg = {
            "tp1": ParallelConfig(),
            "tp2": ParallelConfig(tp=2),
            "pp2": ParallelConfig(pp=2),
        }[layout]
        ctx = initialize_parallel(pcfg)
        for name, folder in folders.items():
            cfg = model_config_from_hf(folder)
            data = batches(cfg.vocab_size)
            reader = HFReader(folder)
            model = build_model(cfg, ctx, init_weights=False)
            load_hf_weights(model, reader, cfg)
            got = measure(model, cfg, data)
            key = f"{layout}/{name}"
            if layout == "tp1":
                ref[name] = got
                hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
                with torch.no_grad():
                    hf_logits[name] = torch.cat([hf(ids).logits for ids, _ in data]).float()
            else:
                if got["logits"] is not None:
                    results[f"{key}/logits_maxdiff_vs_tp1"] = float(
                        (got["logits"] - ref[name]["logits"]).abs().max()
                    )
                if got["loss"] is not None:
                    results[f"{key}/loss_rel_vs_tp1"] = rel(
                        float(got["loss"]), float(ref[name]["loss"])
                    )
                results[f"{key}/gradnorm_rel_vs_tp1"] = rel(
                    grad_norm(got["grads"]), grad_norm(ref[name]["grads"])
                )
                results[f"{key}/grads_maxdiff_vs_tp1"] = max(
                    float((got["grads"][k] - ref[name]["grads"][k]).abs().max())
                    for k in ref[name]["grads"]
                )
            if got["logits"] is not None:
                results[f"{key}/hf_logits_maxdiff"] = float(
                    (got["logits"] - hf_logits[name]).abs().max()
                )
            exported = export_hf_state_dict(model, cfg)
            results[f"{key}/export_bit_identical"] = sorted(exported) == sorted(
                reader.keys()
            ) and all(torch.equal(exported[k], reader(k)) for k in exported)
            if layout == "tp2" and name == "tiny":
                save_checkpoint(args.ckpt, 3, model, extra={"step": 3, "rank": ctx.rank})
            if layout == "pp2" and name == "tiny":
                fresh = build_model(cfg, ctx)
                extra = load_checkpoint(args.ckpt, fresh)
                results[f"{key}/ckpt_extra_step"] = extra["step"]
                fresh.eval()
                with torch.no_grad():
                    fwd = run_schedule(fresh, data, forward_only=True)
                if fwd:
                    logits = torch.cat([d["logits"] for d in fwd])
                    results[f"{key}/ckpt_tp2_to_pp2_hf_maxdiff"] = float(
                        (logits - hf_logits[name]).abs().max()
                    )
        if layout != "pp2":
            destroy_parallel(keep_process_group=True)

    gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        merged: dict = {}
        for r in gathered:
            merged.update(r)
        args.out.write_text(json.dumps(merged, indent=2, sort_keys=True))
    destroy_parallel()


if __name__ == "__main__":
    import faulthandler
    import os

    # a hang shows where every thread was and fails the test instead of stalling CI
    faulthandler.dump_traceback_later(float(os.environ.get("DSM_WORKER_TIMEOUT", "420")), exit=True)
    main()
