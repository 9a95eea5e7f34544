"""The KL, GRPO-loss, advantage and log-softmax kernels compile for an H100 (sm_90) without one.

CI has no GPU, so every other test runs the kernels under Triton's interpreter, which accepts
some programs the real compiler rejects. This compiles each kernel specialisation down to PTX
in a fresh process with the interpreter off (no device is needed for that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    gl, kl, adv, ls = (
        importlib.import_module("dsm_engine.kernels." + m)
        for m in ("grpo_loss_triton", "kl", "advantages", "_logsoftmax")
    )
    target = GPUTarget("cuda", 90, 32)

    def compile_(fn, signature, constexprs):
        sig = dict(signature, **{k: "constexpr" for k in constexprs})
        kernel = triton.compile(ASTSource(fn, sig, constexprs), target=target)
        assert ".entry" in kernel.asm["ptx"], fn.__name__

    compile_(kl._kl_k3_fwd_kernel, dict(logp_ptr="*bf16", ref_ptr="*fp32", out_ptr="*fp32",
             n="i32"), dict(BLOCK=1024))
    compile_(kl._kl_k3_bwd_kernel, dict(grad_ptr="*fp32", logp_ptr="*bf16", ref_ptr="*fp32",
             dlogp_ptr="*bf16", dref_ptr="*fp32", n="i32"), dict(REF_GRAD=True, BLOCK=1024))
    tensors = dict(logp_ptr="*bf16", old_ptr="*bf16", ref_ptr="*fp32", mask_ptr="*u8",
                   adv_ptr="*fp32")
    scalars = dict(batch="i32", seq_len="i32", s_logp="i32", s_old="i32", s_ref="i32",
                   s_mask="i32", s_adv="i32", group_size="i32", adv_eps="fp32",
                   clip_low="fp32", clip_high="fp32", beta="fp32")
    for mode in (0, 1, 2):
        blocks = dict(ADV_MODE=mode, BLOCK_B=2, BLOCK_T=512, BLOCK_G=16)
        compile_(gl._grpo_loss_fwd_kernel, dict(tensors, row_loss_ptr="*fp32",
                 row_count_ptr="*fp32", partials_ptr="*fp32", **scalars), blocks)
        compile_(gl._grpo_loss_bwd_kernel, dict(grad_row_ptr="*fp32", **tensors,
                 dlogp_ptr="*bf16", **scalars), blocks)
    compile_(adv._group_advantages_fwd_kernel, dict(rewards_ptr="*fp32", out_ptr="*fp32",
             group_size="i32", eps="fp32"), dict(BLOCK_G=16))
    compile_(adv._process_advantages_fwd_kernel, dict(rew_ptr="*fp32", ends_ptr="*i64",
             smask_ptr="*u8", out_ptr="*fp32", steps="i32", group_size="i32",
             seq_len="i32", eps="fp32"), dict(BLOCK_GS=256, BLOCK_S=32, BLOCK_T=128))
    for has_shift in (False, True):  # the vocabulary-chunk statistics use the shifted frame
        compile_(ls._stats_kernel, dict(X="*bf16", stride_xn="i64", stride_xv="i64",
                 TGT="*i64", LSE="*fp32", TLOGIT="*fp32", PX="*fp32", SHIFT="*fp32",
                 vocab_start="i64", V="i32", inv_t="fp32"),
                 dict(HAS_SHIFT=has_shift, BLOCK=4096))
    compile_(ls._grad_kernel, dict(X="*bf16", stride_xn="i64", stride_xv="i64", DX="*bf16",
             stride_dn="i64", stride_dv="i64", TGT="*i64", LSE="*fp32", PX="*fp32",
             GA="*fp32", GB="*fp32", GC="*fp32", vocab_start="i64", V="i32", inv_t="fp32"),
             dict(HAS_C=True, BLOCK=4096))
    print("compiled")
    """
)


@pytest.mark.slow
def test_loss_kernels_compile_to_ptx_for_sm90(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]
