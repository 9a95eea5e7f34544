"""Single-process worker for tests/models/test_checkpoint.py (dist_checkpointing spawns helper
processes, so checkpoint work runs in a script with a ``__main__`` guard, not inside pytest).

Modes:
  hang-mid-save ROOT   save step 1, then start saving step 2 and stop (sleep) after the tensor
                       files are written, printing MIDSAVE; the test SIGKILLs it there.
  checks HF_DIR WORK OUT
                       CLI round trip hf-to-dsm / dsm-to-hf, from_pretrained of both, bad
                       inputs (other architecture, missing tensor), optimizer state; writes
                       a JSON of results to OUT.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def hang_mid_save(root: Path) -> None:
    import megatron.core.dist_checkpointing as dc

    from dsm_engine.models import build_model, initialize_parallel, model_config, save_checkpoint

    ctx = initialize_parallel()
    model = build_model(model_config("tiny"), ctx)
    save_checkpoint(root, 1, model, extra={"step": 1})
    print("SAVED1", flush=True)
    original = dc.save

    def save_then_stall(*args, **kwargs):
        original(*args, **kwargs)
        print("MIDSAVE", flush=True)
        time.sleep(600)

    dc.save = save_then_stall
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(root, 2, model, extra={"step": 2})


def _logits_diff(model, hf, ids) -> float:
    from dsm_engine.models import model_logits

    with torch.no_grad():
        return float((model_logits(model, ids) - hf(ids).logits.float()).abs().max())


def checks(hf_dir: Path, work: Path, out: Path) -> None:
    from transformers import LlamaForCausalLM

    from dsm_engine.models import (
        build_model,
        from_pretrained,
        initialize_parallel,
        load_checkpoint,
        model_config,
        save_checkpoint,
    )
    from dsm_engine.models.checkpoint import CheckpointError
    from dsm_engine.models.convert import HFReader, dsm_to_hf_main, hf_to_dsm_main

    res: dict = {}
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    hf = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()

    # CLI round trip: HF -> dsm checkpoint -> HF, tensors bit-identical, tokenizer copied.
    assert hf_to_dsm_main(["--hf", str(hf_dir), "--out", str(work / "dsm")]) == 0
    assert dsm_to_hf_main(["--ckpt", str(work / "dsm"), "--out", str(work / "hf_back")]) == 0
    a, b = HFReader(hf_dir), HFReader(work / "hf_back")
    names = a.keys()
    res["cli_roundtrip_same_keys"] = sorted(names) == sorted(b.keys())
    res["cli_roundtrip_bit_identical"] = all(torch.equal(a(k), b(k)) for k in names)
    res["cli_tokenizer_copied"] = (work / "hf_back" / "tokenizer.json").is_file()
    back = LlamaForCausalLM.from_pretrained(str(work / "hf_back"), dtype=torch.float32).eval()
    with torch.no_grad():
        res["cli_roundtrip_hf_logits_equal"] = torch.equal(back(ids).logits, hf(ids).logits)

    ctx = initialize_parallel()
    res["from_pretrained_hf_maxdiff"] = _logits_diff(from_pretrained(hf_dir, ctx=ctx), hf, ids)
    res["from_pretrained_dsm_maxdiff"] = _logits_diff(
        from_pretrained(work / "dsm", ctx=ctx), hf, ids
    )

    # Another architecture: a checkpoint of "tiny" into a wider model.
    wide = build_model(model_config("tiny", hidden_size=128), ctx)
    try:
        load_checkpoint(work / "dsm", wide)
        res["other_arch_error"] = ""
    except CheckpointError as e:
        res["other_arch_error"] = str(e)

    # A missing tensor: drop one from a saved checkpoint's metadata by saving a model whose
    # final norm is absent (a pre-process-only stage) and loading it into a full model.
    partial = build_model(model_config("tiny"), ctx, post_process=False)
    save_checkpoint(work / "partial", 0, partial)
    full = build_model(model_config("tiny"), ctx)
    try:
        load_checkpoint(work / "partial", full)
        res["missing_tensor_error"] = ""
    except CheckpointError as e:
        res["missing_tensor_error"] = str(e)

    # Optimizer state round trip (megatron optimizer over a DDP-wrapped model).
    res.update(_optimizer_roundtrip(work / "optim"))
    out.write_text(json.dumps(res, indent=2))


def _optimizer_roundtrip(root: Path) -> dict:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from dsm_engine.models import build_model, load_checkpoint, model_config, save_checkpoint

    def make():
        torch.manual_seed(3)
        m = build_model(model_config("tiny"), None)
        ddp = DistributedDataParallel(m.config, DistributedDataParallelConfig(), m)
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2), [ddp])
        return ddp, opt

    def train_step(ddp, opt):
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))
        pos = torch.arange(16).unsqueeze(0).expand(2, 16)
        ddp.zero_grad_buffer()
        opt.zero_grad()
        ddp(ids, pos, None, labels=ids).mean().backward()
        ddp.finish_grad_sync()
        opt.step()

    ddp, opt = make()
    train_step(ddp, opt)
    save_checkpoint(root, 1, ddp, optimizer=opt, extra={"step": 1})
    train_step(ddp, opt)
    after_two = {k: v.clone() for k, v in ddp.module.state_dict().items() if "extra" not in k}

    ddp2, opt2 = make()
    extra = load_checkpoint(root, ddp2, optimizer=opt2)
    train_step(ddp2, opt2)
    diff = max(float((ddp2.module.state_dict()[k] - v).abs().max()) for k, v in after_two.items())
    return {"optimizer_resume_maxdiff": diff, "optimizer_resume_step": extra["step"]}


if __name__ == "__main__":
    if sys.argv[1] == "hang-mid-save":
        hang_mid_save(Path(sys.argv[2]))
    elif sys.argv[1] == "checks":
        checks(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]}")
