"""Chunk sizes and the per-token-chunk loops of the fused lm_head ops.

A token chunk ``hidden[s:e]`` meets the vocabulary (this rank's shard ``weight``) either whole
(one ``(C, V_local)`` logits matmul) or in vocabulary chunks of ``vocab_chunk`` rows of
``weight``. Each vocabulary chunk gives partial statistics ``(lse_k, tgt_k, px_k)`` over its
columns; ``tensor_parallel.merge_partial_stats`` merges them with the same algebra that merges
tensor-parallel shards, so inside a shard the chunks compose with the cross-rank combination.
Chunks after the first report their statistics relative to the first chunk's ``lse`` (the
``shift`` of ``_logsoftmax.stats``), so the merge weights ``exp(lse_k - lse)`` do not inherit
the fp32 rounding of ``O(|logit|)``-sized partial LSEs (entropy and gradients then match the
unchunked path's accuracy).

Gradients need the final ``lse``/``px`` of a row before any column's softmax gradient, so with
vocabulary chunks a second pass recomputes each chunk's logits (``chunk_grads``). The last chunk
of the statistics pass is kept and consumed first by the gradient pass, so ``K`` vocabulary
chunks cost ``K - 1`` extra chunk matmuls, not ``K``.

Chunk rule on CPU (``cpu_chunk_sizes``: the PyTorch primitives on a CPU tensor, chunk sizes
not given): all ``N`` tokens in one token chunk and the vocabulary in ``CPU_VOCAB_CHUNKS`` (64)
slices of ``ceil(V_local / 64)`` rows (at least ``min(V_local, VOCAB_ALIGN)``), so a chunk's
logits are ``N·V_local/64`` elements and, with the two fp32 temporaries of the PyTorch
primitives, the chunk buffers take ``3/64`` (4.7%) of the fp32 materialised logits ``N·V·4``
in fp32: inside the target of <= 10% of those logits beyond the inputs and gradients. Why
this shape: the GPU rule below never chunks at CPU-sized problems (its budget floor is 16 Mi
elements, the whole ``(N, V)`` logits at N=512, V=32,000), so the full logits and two
temporaries of their size were live (~300% of the logits; ~700% for
``fused_linear_logprobs``, whose unused entropy took the entropy gradient branch). Token
chunks over the full vocabulary would each stream the whole ``(V, H)`` weight three times for a
few rows (memory-bound); vocabulary slices keep every matmul ``N`` rows tall, and one token
chunk keeps ``grad_weight_accum="auto"`` at ``"param"`` for bf16 (each weight row's gradient is
one matmul, rounded once: no fp32 ``(V, H)`` buffer). The price: the GRPO op's gradient pass
recomputes the slices' logits (8NHV instead of 6NHV), and 64 slices cost measurably more time
than a few: narrower matmuls run slower on CPU
(``benchmarks/results/head_cpu_chunk_rule/head_cpu.md``: ~3x the materialised CPU time at
N=512, H=1024, V=32,000). The chunk buffers are allocated once per pass and reused
(``ChunkBuffers``).

Low-precision inputs on CPU add fp32 temporaries of their own: the hidden gradient's fp32 sum
over slices ``(token_chunk, H)``, and the fp32 copies that the fp32 products take (no CPU
matmul writes fp32 from bf16). The copies are made in blocks no larger than the logits
block (``_upcast_grads``), and when the weight gradient is summed in fp32 (the
engine's training path: megatron's fp32 ``main_grad``; or ``"fp32"``) the tokens are split
into equal row blocks with ``token_chunk·H`` within the block too (``cpu_chunk_sizes``'
``row_width``), each meeting wider vocabulary slices: at most ~4.5 blocks (~7% of the fp32
logits) are live in all. ``"param"`` and ``"auto"`` without ``main_grad`` keep one token chunk
(one rounding of the weight gradient) and the ``(N, H)`` fp32 sum (``H/V`` of the logits).

Chunk rule on GPU (``default_chunk_sizes``; also the Triton interpreter): the logits buffer of
one (token chunk, vocabulary chunk) pair is bounded by ``budget = max(N·H, MIN_BUDGET)`` elements: no larger than ``hidden``, but
never forced below ``MIN_BUDGET`` (16 Mi elements: 32 MiB of bf16 logits, small beside any
lm_head and its gradient). With ``C0 = min(N, EFFICIENT_TOKEN_CHUNK)`` rows (a matmul narrower
than that underfills the tensor cores):

* if ``C0·V_local <= budget``: no vocabulary chunking (the fast path: ``fused_linear_grpo_loss``
  costs 6NHV with gradients). ``token_chunk`` is the largest power of two with
  ``token_chunk·V_local <= budget``, clamped to ``[C0, N]``; ``vocab_chunk = V_local``.
* otherwise ``token_chunk = C0`` and ``vocab_chunk`` is the largest multiple of
  ``VOCAB_ALIGN`` with ``C0·vocab_chunk <= budget`` (at most ``V_local``; a budget below
  ``C0·VOCAB_ALIGN`` keeps ``VOCAB_ALIGN`` columns and shrinks the token chunk instead).
  The gradient pass then recomputes logits: up to 8NHV.

At DeepSeekMath-7B's head (H=4096, V=102,400) this gives 256 full-vocabulary rows at N=8192
and 128 at N <= 4096 (13 Mi logits), so the 6NHV path is kept; vocabulary chunks start at
larger vocabularies (V_local > 131,072 at 128 <= N <= 4096) or when chunk sizes are passed explicitly.

Gradient accumulators (``addmm_fp32_``): ``grad_weight`` may be fp32 while the inputs are
bf16/fp16 (an fp32 buffer, or megatron's ``main_grad``: ``grad_weight_accum`` of the fused ops,
``_head``); each chunk's product is then added to it without ever being rounded to the
low-precision dtype.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from .library import Backend
from .tensor_parallel import combine_stats, merge_partial_stats


class Head(NamedTuple):
    """What the chunk loops need to know about a fused lm_head call (``_head.resolve_head``)."""

    backend: Backend  # the log-softmax primitives, Triton or PyTorch
    inv_temp: float
    vocab_start: int  # this shard's first global vocabulary id
    token_chunk: int
    vocab_chunk: int
    grad_weight: Literal["fp32", "param", "main_grad"]  # where grad_weight is summed
    # The GRPO op's one-pass path (fp32 PyTorch primitives on the CPU, token chunks over the
    # whole vocabulary): each chunk's logits become their gradient in place (``one_pass_*``).
    one_pass: bool = False


EFFICIENT_TOKEN_CHUNK = 128
MIN_BUDGET = 1 << 24
VOCAB_ALIGN = 128
CPU_VOCAB_CHUNKS = 64  # the CPU rule: a chunk's logits are at most ~1/64 of N·V_local
CPU_ONE_PASS_CHUNKS = 16  # the one-pass path: one fp32 chunk of ~1/16 of N·V_local (6.25%)
ONE_PASS_MIN_ROWS = 128  # narrower chunks stream the weight too often: slices are faster


# Whether CUDA's ``addmm(..., out_dtype=torch.float32)`` accepted an fp32 ``self``; older
# torch builds require ``self`` in the inputs' dtype, and then the upcast fallback is used.
_OUT_DTYPE_ADDMM: dict[str, bool] = {}


def addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for fp32 ``acc (M, K)`` and ``a (M, C)``, ``b (C, K)`` of any float dtype.

    The product is accumulated in fp32 and added to ``acc`` before any rounding to the inputs'
    dtype. On CUDA with bf16/fp16 inputs this is one cuBLAS call with ``out_dtype=float32``
    writing into ``acc`` (no temporary); elsewhere (CPU, or a torch build without that
    overload) the inputs are upcast to fp32 first: a ``(M, C)`` and ``(C, K)`` temporary, exact
    products, slower on GPU.
    """
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if acc.is_cuda and _OUT_DTYPE_ADDMM.get("ok", True):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            _OUT_DTYPE_ADDMM["ok"] = True
            return
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError):  # the overload's dtype checks: use the fallback
            _OUT_DTYPE_ADDMM["ok"] = False
    acc.addmm_(a.float(), b.float())


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def _vocab_chunk_for(budget: int, token_chunk: int, v_local: int) -> int:
    """Largest multiple of ``VOCAB_ALIGN`` within ``budget / token_chunk``, in
    ``[VOCAB_ALIGN, v_local]`` (``v_local`` when it is smaller)."""
    vocab = (budget // token_chunk) // VOCAB_ALIGN * VOCAB_ALIGN
    return min(v_local, max(VOCAB_ALIGN, vocab))


def default_chunk_sizes(
    n: int, h: int, v_local: int, *, budget: int | None = None
) -> tuple[int, int]:
    """``(token_chunk, vocab_chunk)`` for ``N`` tokens, hidden size ``H`` and a ``V_local`` shard.

    ``budget``: most logits elements per chunk (default ``max(N·H, MIN_BUDGET)``); see the
    module docstring for the rule. ``vocab_chunk == v_local`` means no vocabulary chunking.
    """
    budget = max(n * h, MIN_BUDGET) if budget is None else max(int(budget), 1)
    c0 = max(1, min(n, EFFICIENT_TOKEN_CHUNK))
    if c0 * v_local <= budget:
        return max(1, min(n, max(c0, _pow2_floor(budget // v_local)))), v_local
    vocab = _vocab_chunk_for(budget, c0, v_local)
    return max(1, min(c0, budget // vocab)), vocab


def cpu_chunk_sizes(n: int, v_local: int, *, row_width: int = 0) -> tuple[int, int]:
    """``(token_chunk, vocab_chunk)`` of the CPU rule: a block of at most
    ``ceil(N·V_local / CPU_VOCAB_CHUNKS)`` logits. Without ``row_width``, all ``N`` tokens at
    once and the vocabulary in slices of ``ceil(V_local / CPU_VOCAB_CHUNKS)`` rows (at least
    ``min(V_local, VOCAB_ALIGN)``). ``row_width`` (H, when the op holds fp32 ``(token_chunk,
    H)`` temporaries: low-precision inputs whose weight gradient is summed in fp32) also
    bounds ``token_chunk·row_width`` by the block: the tokens split into equal row blocks and
    each block meets wider vocabulary slices. See the module docstring."""
    budget = -(-n * v_local // CPU_VOCAB_CHUNKS)
    rows = n if row_width <= 0 else max(1, min(n, budget // row_width))
    if rows >= n:
        return max(1, n), max(-(-v_local // CPU_VOCAB_CHUNKS), min(v_local, VOCAB_ALIGN))
    rows = -(-n // -(-n // rows))  # equal row blocks, none larger than the bound
    return rows, _vocab_chunk_for(budget, rows, v_local)


def resolve_chunk_sizes(
    n: int,
    h: int,
    v_local: int,
    token_chunk: int | None,
    vocab_chunk: int | None,
    *,
    cpu: bool = False,
    fp32_rows: bool = False,
) -> tuple[int, int]:
    """User chunk sizes (positive ints or None, as ``HeadOptions`` validated them), a missing
    one filled from the default budget (``default_chunk_sizes``); with neither given and
    ``cpu`` (the PyTorch primitives on a CPU tensor), the CPU rule (``cpu_chunk_sizes``, its
    rows bounded too when ``fp32_rows``: fp32 ``(token_chunk, H)`` temporaries exist).
    Returns ``(token_chunk, vocab_chunk <= v_local)``."""
    if token_chunk is None and vocab_chunk is None:
        if cpu:
            return cpu_chunk_sizes(n, v_local, row_width=h if fp32_rows else 0)
        return default_chunk_sizes(n, h, v_local)
    budget = max(n * h, MIN_BUDGET)
    if vocab_chunk is None:
        assert token_chunk is not None
        if token_chunk * v_local <= budget:
            return token_chunk, v_local
        return token_chunk, _vocab_chunk_for(budget, token_chunk, v_local)
    vocab_chunk = min(vocab_chunk, v_local)
    if token_chunk is None:
        token_chunk = max(1, min(n, _pow2_floor(budget // vocab_chunk)))
    return token_chunk, vocab_chunk


class ChunkBuffers(NamedTuple):
    """The chunk-sized buffers of one pass of the chunk loops, allocated once per pass and
    reused by every chunk: ``logits`` (flat, the inputs' dtype, one chunk's logits) and, for
    the PyTorch primitives, ``work`` (two flat fp32 buffers, their temporaries; None for
    Triton).

    Per-chunk allocations of this size would leave the CPU heap fragmented: glibc serves them
    from its heap once a chunk has been freed, the small tensors of the next chunk are carved
    out of the freed hole, and each chunk then extends the heap (a peak RSS that grew with
    the number of chunks, to half the full logits at 32 chunks).
    """

    logits: torch.Tensor
    work: tuple[torch.Tensor, torch.Tensor] | None


def chunk_buffers(head: Head, hidden: torch.Tensor, n_rows: int, v_local: int) -> ChunkBuffers:
    """``ChunkBuffers`` for chunks of at most ``min(token_chunk, n_rows)`` rows of ``hidden``
    and ``min(vocab_chunk, v_local)`` columns."""
    size = min(head.token_chunk, n_rows) * min(head.vocab_chunk, v_local)
    logits = hidden.new_empty(size)
    work = None
    if head.backend.scratch:
        work = tuple(hidden.new_empty(size, dtype=torch.float32) for _ in range(2))
    return ChunkBuffers(logits, work)


def _chunk_logits(
    hidden: torch.Tensor, w: torch.Tensor, buffers: ChunkBuffers | None
) -> torch.Tensor:
    """``hidden (C, H) @ w.T`` for ``w (Vc, H)``, into ``buffers.logits`` when given."""
    if buffers is None:
        return hidden @ w.T
    out = buffers.logits[: hidden.shape[0] * w.shape[0]].view(hidden.shape[0], w.shape[0])
    return torch.matmul(hidden, w.T, out=out)


def _fp32_copy(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``x`` upcast to fp32 in the flat buffer ``scratch`` (exact; no new allocation)."""
    return scratch[: x.numel()].view(x.shape).copy_(x)


def _upcast_grads(
    d32: torch.Tensor,
    w: torch.Tensor,
    hidden: torch.Tensor,
    acc: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    scratch: torch.Tensor,
) -> None:
    """``acc += d32 @ w`` and ``grad_weight += d32.T @ hidden`` in fp32 for fp32 ``d32 (C, Vc)``
    and low-precision ``w (Vc, H)``, ``hidden (C, H)`` (either target may be None).

    The fp32 copies of the operands go into ``scratch`` (flat fp32, ``>= C·Vc`` elements), one
    block at a time: ``hidden`` in column blocks of ``Vc`` (all of it when ``H <= Vc``), ``w``
    in row blocks of ``C·Vc // H`` rows (column blocks ``C`` wide when not even one row fits:
    few tokens). Row blocks keep the products full-width: column blocks ``min(C, Vc)`` wide
    for both made ``(C, Vc) @ (Vc, C)`` products from strided copies, 2x slower at ``C = 57``,
    ``H = 4096``; and copies into a buffer leave no freed blocks behind in the CPU heap.
    """
    c, vc = d32.shape
    h = w.shape[1]
    if grad_weight is not None:
        for h0 in range(0, h, vc):
            cols = slice(h0, h0 + vc)
            grad_weight[:, cols].addmm_(d32.T, _fp32_copy(hidden[:, cols], scratch))
    if acc is None:
        return
    rows = c * vc // h
    if rows:
        for v0 in range(0, vc, rows):
            acc.addmm_(d32[:, v0 : v0 + rows], _fp32_copy(w[v0 : v0 + rows], scratch))
        return
    for h0 in range(0, h, c):
        cols = slice(h0, h0 + c)
        acc[:, cols].addmm_(d32, _fp32_copy(w[:, cols], scratch))


def chunk_stats(
    head: Head,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    keep_last: bool = False,
    buffers: ChunkBuffers | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    """This shard's ``(lse, tgt, px)`` (fp32 ``(C,)`` each) for the token chunk ``hidden (C, H)``.

    Walks ``weight (V_local, H)`` in slices of ``head.vocab_chunk`` rows; only one slice's logits
    ``(C, vocab_chunk)`` exist at a time. With ``keep_last`` the last slice's logits are
    returned in a one-element list for ``chunk_grads`` to take (an empty list otherwise): the
    caller holds no reference of its own, so the buffer dies as soon as it has been used.
    ``buffers``: where the slices' logits and temporaries are built (``chunk_buffers``).
    """
    v, vocab_chunk = weight.shape[0], head.vocab_chunk
    parts = []
    logits = shift = None
    for v0 in range(0, v, vocab_chunk):
        logits = None  # free the previous slice before the next matmul allocates
        logits = _chunk_logits(hidden, weight[v0 : v0 + vocab_chunk], buffers)
        work = None if buffers is None else buffers.work
        lse, tgt, px = head.backend.stats(
            logits, targets, head.vocab_start + v0, head.inv_temp, shift, work
        )
        if shift is None and vocab_chunk < v:
            # Later chunks report lse/px relative to this chunk's lse: merging small numbers
            # keeps each chunk's fp32 rounding of an O(|logit|) lse out of the merge weights.
            shift, lse, px = lse, torch.zeros_like(lse), px - lse
        parts.append((lse, tgt, px))
    if shift is None:
        stats = parts[0]
    else:
        lse, tgt, px = (torch.stack(p) for p in zip(*parts, strict=True))
        lse, tgt, px = merge_partial_stats(lse, tgt, px)
        stats = (lse + shift, tgt, px + shift)
    kept = [logits] if keep_last else []
    del logits
    return stats, kept


def chunk_grads(
    head: Head,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    px: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_ent: torch.Tensor | None,
    *,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    last_logits: list[torch.Tensor] | None = None,
    buffers: ChunkBuffers | None = None,
) -> None:
    """Backpropagate one token chunk through the lm_head, slice by vocabulary slice.

    ``lse``/``px`` are the rows' global statistics; ``grad_logp``/``grad_ent`` (fp32 ``(C,)``)
    the incoming gradients. Writes ``grad_hidden (C, H)`` (summed over slices, in fp32 when
    ``hidden`` is low precision) and adds each slice's ``dlogits.T @ hidden`` into its rows of
    ``grad_weight (V_local, H)``: in the weight's dtype when ``grad_weight`` has it (one
    rounding per call), exactly in fp32 when ``grad_weight`` is fp32 (a buffer or ``main_grad``).
    ``last_logits``: the list from ``chunk_stats(keep_last=True)``; its tensor (the last
    slice's logits) is taken out, used first and overwritten by its gradient, not recomputed.
    ``buffers``: as in ``chunk_stats`` (the same ones: the kept slice is consumed before the
    next slice is recomputed into the buffer).
    """
    v, vocab_chunk = weight.shape[0], head.vocab_chunk
    starts = list(range(0, v, vocab_chunk))
    kept = last_logits.pop() if last_logits else None
    if kept is not None:
        starts.reverse()
    acc = None
    if grad_hidden is not None and len(starts) > 1 and hidden.dtype != torch.float32:
        acc = torch.zeros(grad_hidden.shape, dtype=torch.float32, device=grad_hidden.device)
    work = None if buffers is None else buffers.work
    # The PyTorch primitives on CPU with low-precision inputs: the fp32 products take fp32
    # copies of their operands (no CPU matmul writes fp32 from bf16), never one larger than
    # a chunk block (_upcast_grads), so the CPU rule's budget holds.
    upcast = work is not None and not hidden.is_cuda and hidden.dtype != torch.float32
    for i, v0 in enumerate(starts):
        w = weight[v0 : v0 + vocab_chunk]
        if kept is not None:
            logits, kept = kept, None
        else:
            logits = _chunk_logits(hidden, w, buffers)
        start = head.vocab_start + v0
        dlogits = head.backend.grad(
            logits, targets, lse, px, grad_logp, grad_ent, None, start, head.inv_temp, True, work
        )
        logits = None
        rows = None if grad_weight is None else grad_weight[v0 : v0 + vocab_chunk]
        fp32_rows = rows is not None and rows.dtype == torch.float32
        d32 = None
        if upcast and (acc is not None or fp32_rows):
            assert work is not None  # the gradient primitive is done with both buffers
            d32 = _fp32_copy(dlogits, work[1])
            _upcast_grads(d32, w, hidden, acc, rows if fp32_rows else None, scratch=work[0])
        if grad_hidden is not None and (acc is None or d32 is None):
            if acc is not None:
                addmm_fp32_(acc, dlogits, w)
            elif i == 0:
                torch.matmul(dlogits, w, out=grad_hidden)
            else:
                grad_hidden.addmm_(dlogits, w)
        if rows is not None and (d32 is None or not fp32_rows):
            addmm_fp32_(rows, dlogits.T, hidden)
        dlogits = d32 = None
    if acc is not None:
        grad_hidden.copy_(acc)


def cpu_one_pass_rows(n: int) -> int | None:
    """Token rows per chunk of the GRPO op's one-pass path on the CPU when no chunk sizes are
    given: ``ceil(N / CPU_ONE_PASS_CHUNKS)``, so its one fp32 ``(rows, V_local)`` buffer is
    ~6.25% of the fp32 logits; None below ``ONE_PASS_MIN_ROWS`` rows, where a chunk streams
    the ``(V, H)`` weight and its gradient for too few rows (measured at H=1024, V=32,000:
    slower than the CPU rule's vocabulary slices at N <= 1024, faster at N = 2048)."""
    rows = -(-n // CPU_ONE_PASS_CHUNKS)
    return rows if rows >= ONE_PASS_MIN_ROWS else None


def one_pass_stats(
    head: Head,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    buffer: torch.Tensor,
    group,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """First half of the one-pass path for fp32 ``hidden (C, H)`` and ``weight (V_local, H)``.

    The chunk's full-vocabulary logits go into ``buffer`` (flat fp32, ``>= C·V_local``) and are
    turned in place into ``exp(z - max)``; no other tensor of the chunk's size is allocated.
    Returns ``(e, lse, tgt, scale)``: that ``(C, V_local)`` view, the rows' global ``lse`` and
    target logit (merged over ``group``; log-probs are ``tgt - lse``), and
    ``scale = exp(max - lse)``, so that ``e * scale`` is this shard's part of the softmax.
    """
    c, v = hidden.shape[0], weight.shape[0]
    z = torch.matmul(hidden, weight.T, out=buffer[: c * v].view(c, v))
    if head.inv_temp != 1.0:
        z.mul_(head.inv_temp)
    local = targets.long() - head.vocab_start
    owned = (local >= 0) & (local < v)
    zt = z.gather(1, local.clamp(0, v - 1).unsqueeze(1)).squeeze(1)
    zt = torch.where(owned, zt, torch.zeros_like(zt))
    m = z.amax(dim=1)
    z.sub_(m.unsqueeze(1)).exp_()
    lse = m + z.sum(dim=1).log()
    lse, tgt, _ = combine_stats(lse, zt, torch.zeros_like(lse), group)
    return z, lse, tgt, torch.exp(m - lse)


def one_pass_grads(
    head: Head,
    e: torch.Tensor,
    scale: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    grad_logp: torch.Tensor,
    *,
    grad_hidden: torch.Tensor,
    grad_weight: torch.Tensor | None,
) -> None:
    """Second half: with ``e``/``scale`` from ``one_pass_stats`` and ``grad_logp`` (fp32
    ``(C,)``, the loss's gradient in the target log-probs), turn ``e`` in place into the
    logits' gradient ``grad_logp · (onehot − softmax) / T`` and write ``grad_hidden (C, H)``
    (this shard's part) and add ``grad_weight (V_local, H) += dlogits.T @ hidden``."""
    v = weight.shape[0]
    g = grad_logp.float() * head.inv_temp
    e.mul_((-g * scale).unsqueeze(1))
    local = targets.long() - head.vocab_start
    owned = (local >= 0) & (local < v)
    e.scatter_add_(1, local.clamp(0, v - 1).unsqueeze(1), torch.where(owned, g, 0.0).unsqueeze(1))
    torch.matmul(e, weight, out=grad_hidden)
    if grad_weight is not None:
        grad_weight.addmm_(e.T, hidden)
