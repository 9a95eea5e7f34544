"""Row-wise log-softmax statistics over a vocabulary shard, and their gradient.

These are the two primitives every op in this package is built from:

* ``stats``: for each row of ``logits (N, V_local)`` (any strides), with ``z = logits / T``:
  ``lse = log Σ_j exp(z_j)``, ``tgt = z[target - vocab_start]`` (0 when this shard does not own
  the target) and ``px = Σ_j softmax(z)_j · z_j``. All three are fp32 ``(N,)``. They are exactly
  what vocabulary shards exchange (see ``tensor_parallel.combine_stats``): ``log p = tgt − lse``
  and entropy ``= lse − px``. An optional fp32 ``shift (N,)`` reports ``lse`` and ``px`` of
  ``z − shift`` instead (``tgt`` stays unshifted): vocabulary chunks pass the first chunk's
  ``lse`` so their partial statistics are small numbers whose fp32 rounding does not add up
  when they are merged.
* ``grad``: ``d/dlogits`` of ``Σ_i a_i·log p_i(target) + c_i·entropy_i`` given the *global*
  ``lse`` and ``px`` (so a shard needs no communication in backward):
  ``(a·(onehot − p) − c·p·(z − px)) / T``, written in the logits dtype, optionally into the
  logits buffer itself.

Each primitive has a Triton kernel (one program per row, an online log-sum-exp over vocabulary
blocks so a row is read once) and a plain-PyTorch twin used on CPU and as the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpret import launchable

# Largest vocabulary block one program handles per loop step. A module attribute so tests can
# shrink it to exercise the multi-block loop and its ragged tail at small vocabularies.
MAX_BLOCK_V = 4096


def _block_v(v: int) -> int:
    return max(16, min(triton.next_power_of_2(v), MAX_BLOCK_V))


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


@triton.jit
def _stats_kernel(
    X,
    stride_xn,
    stride_xv,
    TGT,
    LSE,
    TLOGIT,
    PX,
    SHIFT,
    vocab_start,
    V,
    inv_t,
    HAS_SHIFT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_xn
    shift = tl.zeros((), tl.float32)
    if HAS_SHIFT:
        shift = tl.load(SHIFT + row)
    # Online log-sum-exp with a scalar running max: every block holds at least one real column,
    # so the max stays finite and exp(-inf - m) of masked lanes is exactly 0.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    sz = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < V
        z = tl.load(x_row + cols * stride_xv, mask=valid, other=float("-inf")).to(tl.float32)
        z = z * inv_t - shift
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        # sz is Σ e·(z − m), kept relative to the running max: the gradient's (z − px) cancels
        # to ~0 at the likeliest token, and a Σ e·z of |z|-sized terms would put ulps of |z|
        # there (an 8-ulp px error showed as 1.7e-5 in entropy gradients across TP shards).
        moved = tl.where(s > 0, m - m_new, 0.0)  # s == 0 only before the first block (m = -inf)
        sz = (sz + s * moved) * scale + tl.sum(e * tl.where(valid, z - m_new, 0.0), axis=0)
        s = s * scale + tl.sum(e, axis=0)
        m = m_new
    tl.store(LSE + row, m + tl.log(s))
    tl.store(PX + row, m + sz / s)
    t = tl.load(TGT + row).to(tl.int64) - vocab_start
    owned = (t >= 0) & (t < V)
    t_safe = tl.where(owned, t, 0)
    zt = tl.load(x_row + t_safe * stride_xv).to(tl.float32) * inv_t
    tl.store(TLOGIT + row, tl.where(owned, zt, 0.0))


@triton.jit
def _grad_kernel(
    X,
    stride_xn,
    stride_xv,
    DX,
    stride_dn,
    stride_dv,
    TGT,
    LSE,
    PX,
    GA,
    GB,
    GC,
    vocab_start,
    V,
    inv_t,
    HAS_C: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_xn
    d_row = DX + row * stride_dn
    lse = tl.load(LSE + row)
    a = tl.load(GA + row)
    b = tl.load(GB + row)
    t = tl.load(TGT + row).to(tl.int64) - vocab_start
    if HAS_C:
        c = tl.load(GC + row)
        px = tl.load(PX + row)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < V
        z = tl.load(x_row + cols * stride_xv, mask=valid, other=0.0).to(tl.float32) * inv_t
        p = tl.exp(z - lse)
        g = tl.where(cols == t, a, 0.0) - b * p
        if HAS_C:
            g -= c * p * (z - px)
        # Each block is read before it is written, so DX may alias X (in-place backward).
        tl.store(d_row + cols * stride_dv, (g * inv_t).to(DX.dtype.element_ty), mask=valid)


def stats_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    inv_temp: float,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton ``stats``: ``(lse, tgt, px)``, each fp32 ``(N,)``; see the module docstring."""
    n, v = logits.shape
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    tgt = torch.empty_like(lse)
    px = torch.empty_like(lse)
    if n == 0:
        return lse, tgt, px
    block = _block_v(v)
    launchable(_stats_kernel, logits)[(n,)](
        logits,
        logits.stride(0),
        logits.stride(1),
        targets,
        lse,
        tgt,
        px,
        lse if shift is None else shift.to(torch.float32).contiguous(),
        vocab_start,
        v,
        inv_temp,
        HAS_SHIFT=shift is not None,
        BLOCK=block,
        num_warps=_num_warps(block),
    )
    return lse, tgt, px


def grad_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    px: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    vocab_start: int,
    inv_temp: float,
    out: torch.Tensor | None = None,
    grad_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton ``grad`` into ``out`` (a new contiguous tensor, or ``logits`` for in place).

    ``grad_lse`` (optional) adds ``d/dlogits`` of ``Σ_i grad_lse_i · lse_i``.
    """
    n, v = logits.shape
    if out is None:
        out = torch.empty((n, v), dtype=logits.dtype, device=logits.device)
    if n == 0:
        return out
    block = _block_v(v)
    ga = grad_logp.to(torch.float32).contiguous()
    gb = ga if grad_lse is None else (ga - grad_lse.to(torch.float32)).contiguous()
    gc = ga if grad_ent is None else grad_ent.to(torch.float32).contiguous()
    launchable(_grad_kernel, logits)[(n,)](
        logits,
        logits.stride(0),
        logits.stride(1),
        out,
        out.stride(0),
        out.stride(1),
        targets,
        lse,
        px,
        ga,
        gb,
        gc,
        vocab_start,
        v,
        inv_temp,
        HAS_C=grad_ent is not None,
        BLOCK=block,
        num_warps=_num_warps(block),
    )
    return out


def _scratch(
    work: tuple[torch.Tensor, torch.Tensor] | None, k: int, shape: torch.Size, device
) -> torch.Tensor:
    """A ``shape``-sized fp32 view of the ``k``-th flat scratch buffer of ``work`` (a new
    tensor without one)."""
    if work is None:
        return torch.empty(shape, dtype=torch.float32, device=device)
    return work[k][: shape.numel()].view(shape)


def stats_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int,
    inv_temp: float,
    shift: torch.Tensor | None = None,
    work: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch twin of :func:`stats_triton` (computes in fp32).

    Written as few passes over the ``(N, V)`` chunk as eager PyTorch allows (it is the CPU
    path): one ``exp`` serves both ``lse`` and ``px``, and ``px`` is a batched dot product.
    Its two chunk-sized fp32 temporaries live in ``work`` (two flat fp32 buffers of ``>= N·V``)
    when given: a caller walking many chunks then allocates them once (``_head_chunks``).
    """
    n, v = logits.shape
    d = _scratch(work, 0, logits.shape, logits.device)
    if logits.dtype == torch.float32 and inv_temp == 1.0:
        z = logits  # no copy: d = z - max is written straight into the scratch
    else:
        # Upcast, then scale: torch.mul(bf16, t, out=fp32) computes and rounds in bf16.
        z = d.copy_(logits)
        if inv_temp != 1.0:
            z.mul_(inv_temp)
    local = targets.long() - vocab_start
    owned = (local >= 0) & (local < v)
    zt = z.gather(1, local.clamp(0, max(v - 1, 0)).unsqueeze(1)).squeeze(1)
    m = z.amax(dim=-1, keepdim=True)  # (N, 1)
    torch.sub(z, m, out=d)  # (N, V) z - max
    e = torch.exp(d, out=_scratch(work, 1, logits.shape, logits.device))
    s = e.sum(dim=-1)
    # With a shift, lse and px are reported relative to it: only the row's max moves (one
    # rounding of max - shift, as when z - shift was formed element by element).
    m = m.squeeze(1) if shift is None else m.squeeze(1) - shift.float()
    lse = m + s.log()
    # px = Σ softmax·z as max + Σ softmax·(z − max): see _stats_kernel for why the shift.
    px = m + torch.bmm(e.unsqueeze(1), d.unsqueeze(2)).view(n) / s
    return lse, torch.where(owned, zt, torch.zeros_like(zt)), px


def grad_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    px: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    vocab_start: int,
    inv_temp: float,
    out: torch.Tensor | None = None,
    grad_lse: torch.Tensor | None = None,
    work: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """PyTorch twin of :func:`grad_triton`.

    The gradient is built in fp32 in ``out`` itself when ``out`` is fp32, else in ``work``
    (two flat fp32 buffers of ``>= N·V`` elements; new buffers without it) and copied out: three
    passes over the chunk without an entropy gradient, at most two fp32 chunk buffers with
    one.
    """
    n, v = logits.shape
    a = grad_logp.float().unsqueeze(1)
    b = a if grad_lse is None else a - grad_lse.float().unsqueeze(1)
    fp32_out = out is not None and out.dtype == torch.float32
    g = out if fp32_out else _scratch(work, 0, logits.shape, logits.device)
    if inv_temp == 1.0:
        torch.sub(logits, lse.unsqueeze(1), out=g)  # in place when out is logits
    else:
        # Upcast, then scale (as in stats_torch); a no-op copy when out is the fp32 logits.
        g.copy_(logits).mul_(inv_temp).sub_(lse.unsqueeze(1))
    if grad_ent is None:
        g.exp_().mul_(b * -inv_temp)  # -b·p/T
    else:
        # -(b + c·(z - px))·p/T with p = exp(z - lse): z - px = (z - lse) + (lse - px), and
        # (z - lse) sits in g before it is overwritten by p.
        t = _scratch(work, 1, logits.shape, logits.device)
        c = grad_ent.float().unsqueeze(1)
        torch.add(g, (lse - px).unsqueeze(1), out=t).mul_(c).add_(b)  # b + c·(z - px)
        g.exp_().mul_(t).mul_(-inv_temp)
        del t
    local = targets.long() - vocab_start
    owned = (local >= 0) & (local < v)
    rows = torch.nonzero(owned).squeeze(1)
    g[rows, local[rows]] += a.squeeze(1)[rows] * inv_temp
    if out is None:
        return g.to(logits.dtype) if work is None else g.to(logits.dtype, copy=True)
    if g is not out:
        out.copy_(g)
    return out
