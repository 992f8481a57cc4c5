"""Hand-written forward and backward of the SAE loss: five GEMMs and two elementwise passes.

Autograd keeps every intermediate and runs separate elementwise kernels for ReLU, its mask, the
L1 term and the bias reductions: memory-bound passes that cost a large share of the step at B=4096
(how large: the autograd rows of benchmarks/bench_train_step.py, benchmarks/README.md). Here each
member's step is

    x    = y - b_dec                               (B, N)   the only pass over (B, N)
    c    = relu(1 b_enc^T + x @ W_enc)             (B, J)   GEMM 1 on a rank-1 bias fill, ReLU in place
    err  = c @ W_dec - x   (= z - y)               (B, N)   GEMM 2, in place over x (beta = -1)
    dz   = s err,  s = 2 / (B N)                            (folded into the GEMMs' alpha)
    dc   = 1 (alpha / (B J))^T + dz @ W_dec^T      (B, J)   GEMM 3 on a rank-1 fill (c >= 0: d|c|/dc = 1)
    dpre = dc * [c > 0]                            (B, J)   one pass, in place
    dW_dec = c^T @ dz                              (J, N)   GEMM 4
    dW_enc = x^T @ dpre = y^T @ dpre - b_dec db_enc^T       GEMM 5 plus a rank-1 update (x is gone)
    db_enc = 1^T dpre;  db_dec = 1^T dz - W_enc db_enc      column sums as GEMMs with a ones row

Why this shape: on this project's 2-core machines every torch elementwise kernel is an OpenMP
region, and when another process holds a core each region waits out a scheduler slice, whatever
its size (benchmarks/bench_threads.py; the busy-machine tables in benchmarks/HISTORY.md). Bias
fills, column sums and the rank-1 correction therefore go through BLAS (which does not pay that
wait), only ReLU, its mask and ``y - b_dec`` remain elementwise, the
full reductions (L1, MSE) use torch's reduction kernels, and every (B, J) and (B, N) buffer is
allocated once and reused across steps (fresh 64 MB tensors cost page faults on every step).

The result equals autograd's through ``SAE.loss`` to float tolerance (tests/unit/test_step.py).

The sparse path
---------------
Once an SAE is sparse, few codes fire: L0 (active latents per sample) is 5-50 of J. GEMM 1 still
needs the dense (B, J) product, but everything after it only needs the active entries
A = {(b, j): c_bj > 0}, |A| = L0 B, listed in sample-major order and (after a stable sort by
latent) in latent-major order:

    A      = nonzero(c)                                     one pass over (B, J)
    err    = c_A @ W_dec - x                       (B, N)   weighted sum of atoms per sample, |A| N
    dpre_A = s (err @ W_dec^T)_A + alpha / (B J)   (|A|,)   sampled dense-dense product, |A| N
    dW_dec = s c_A^T @ err                         (J, N)   weighted sum of error rows per latent, |A| N
    dW_enc = (dpre_A^T @ y)^T - b_dec db_enc^T     (N, J)   weighted sum of inputs per latent, |A| N,
                                                            plus a transposed copy of (J, N)
    db_enc = column sums of dpre_A (index_add over A);  db_dec as in the dense path

(dpre_A is dc on A; outside A the ReLU's derivative is 0.) The three weighted sums are
``embedding_bag`` calls (bags = samples or latents, weights = codes or dpre), about twice as fast
as the same products with a CSR matrix; the sampled product is ``sampled_addmm`` on the codes as
CSR. Indices are int32 (half the bytes to sort and gather). A sparse member's step costs GEMM 1,
three passes over the (B, J) codes (the ReLU, the count, the nonzero) and O(|A| (N + log |A|)) for
the rest, against five GEMMs for the dense path. How much faster it is than the dense step and
SAELens's standard step, and below which L0/J it wins on one thread (how packed lanes run) and on
more: benchmarks/bench_sparse_step.py, results in benchmarks/README.md.

Details that matter for that speed:

* The ReLU is ``threshold_(c, 0, 0)`` rather than ``relu_``: the same pass, but it writes +0.0
  where relu_ keeps a -0.0, so a code's bits are zero exactly when it is inactive, and the count
  and the nonzero run on the integer view (twice as fast as the float compare).
* The O(|A|) part runs with torch on one thread (GEMM 1 and the (B, J) passes keep all threads).
  It is a dozen short kernels (sort, gathers, the sparse products); on a shared 2-core machine
  every parallel one can wait out a scheduler slice (above), and a parallel stable sort is many
  parallel regions, so on a busy machine the sort alone was far slower on two threads than on one.
* A member that took the sparse path last step skips the count: the nonzero's length is the count.

``loss_and_grads(..., sparse_below=f)`` chooses per member and per step: after GEMM 1 it counts
that member's active codes and finishes with the sparse path when their share nnz / (B J) is
below f, with the dense path otherwise (early in training, when half the codes fire). What the
count costs a dense member: the "dense step, counted" case of benchmarks/bench_sparse_step.py.
With f = 0 nothing is counted and every member runs the dense path. The trainer passes
``TrainConfig.sparse_below``, or when that is null
:func:`auto_sparse_below` (the measured crossover for its device and threads). Both paths give the
same loss and gradients to float rounding (tests/unit/test_sparse_step.py). The shares of the last call
are kept in the caller's buffers (:attr:`StepBuffers.active_share`).

Buffers
-------
The (B, J) and (B, N) buffers, and the shares of the last call (which decide how the next call counts),
live in a :class:`StepBuffers` that belongs to whoever steps the SAE, never to this module: every
call takes one (``buffers=``). The trainer holds one per group (train.py); a test or a benchmark stepping
an SAE by hand makes one per SAE and passes it to every call.

The stacked step
----------------
For small SAEs (n = 32, J <= 128, B = 256) a member's five GEMMs are tiny and the dozen kernel
calls around them, each with its Python and dispatch cost, take most of the step
(benchmarks/bench_small_packs.py): looping over members multiplies that by K.
:func:`loss_and_grads_stacked` runs the same algebra once for all K
members as batched GEMMs (``bmm`` over the leading member axis), so a pack's step is ~15 kernel
calls whatever K is. Members may differ in J (a padded stack, ``SAE.sizes_K``: the padding is zero
and stays zero, see sae.py) and in their batch stream: the batch is (S, B, N), one slice per stream,
and member k reads slice ``stream_K[k]``. Each member's L1 normalisation uses its own J_k, so its
loss and gradients are those of its solo run. Per member k:

    x    = y[stream_k] - b_dec                     (K, B, N)  one gather + one pass, kept (GEMM 5 reads it)
    c    = relu(b_enc + x @ W_enc)                 (K, B, J)  GEMM 1 (baddbmm on the broadcast bias)
    err  = c @ W_dec - x                           (K, B, N)  GEMM 2
    dc   = alpha_k / (B J_k) + s err @ W_dec^T     (K, B, J)  GEMM 3 on the broadcast L1 term
    dpre = dc * [c > 0];  dW_dec = s c^T @ err;  dW_enc = x^T @ dpre           GEMMs 4 and 5
    db_enc = sum_b dpre;  db_dec = s sum_b err - W_enc db_enc

It has no sparse variant (at these sizes the dense batched GEMMs are cheaper than the sparse path's
sort and gathers) and no ``skip``: a stopped member leaves the stack at the next evaluation
(train.py rebuilds the group without it); until then its step is computed and discarded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from sae_sweep.sae import SAE
from sae_sweep.threads import torch_threads

_threshold_backward = torch.ops.aten.threshold_backward.grad_input
# The integer type of a float's size: codes are counted and listed through their bit patterns.
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class _Workspace:
    """Buffers of one batch shape, reused by every step and shared by the members (run in turn)."""

    key: tuple
    c_BJ: torch.Tensor
    dc_BJ: torch.Tensor
    err_BN: torch.Tensor
    ones_B1: torch.Tensor
    ones_1B: torch.Tensor
    fill_1J: torch.Tensor
    row_starts_B1: torch.Tensor  # (B+1,) int64, b J: where row b starts in the flattened codes
    col_starts_J1: torch.Tensor  # (J+1,) 0..J in the index type: where each latent starts in a sorted list
    index_dtype: torch.dtype  # of the sparse path's indices: int32 (half the bytes to sort and gather) while B J fits
    active_share: list[float] | None = None  # nnz(c) / (B J) per member in the last call, if counted

    @classmethod
    def build(cls, key: tuple, b: int, n: int, j: int, device: torch.device, dtype: torch.dtype) -> _Workspace:
        kw = {"device": device, "dtype": dtype}
        ones = torch.ones(b, 1, **kw)
        row_starts = torch.arange(0, (b + 1) * j, j, device=device)
        index_dtype = torch.int32 if b * j < 2**31 else torch.int64
        return cls(key, torch.empty(b, j, **kw), torch.empty(b, j, **kw), torch.empty(b, n, **kw),
                   ones, ones.view(1, b), torch.empty(1, j, **kw), row_starts,
                   torch.arange(j + 1, device=device, dtype=index_dtype), index_dtype)


class StepBuffers:
    """What the steps of one SAE reuse: its buffers (built for a batch shape, rebuilt when it changes)
    and each member's share of active codes in the last call. Held by whoever steps that SAE; the
    step's numbers never depend on it, only how much it allocates and counts."""

    def __init__(self) -> None:
        self.dense: _Workspace | None = None
        self.stacked: _StackedWorkspace | None = None

    @property
    def active_share(self) -> list[float] | None:
        """Each member's share of active codes, nnz(c) / (B J), in the last ``loss_and_grads`` call with
        these buffers. Member k took the sparse path when its share was below that call's ``sparse_below``.
        None before the first call and after a call with ``sparse_below=0`` (which counts nothing)."""
        ws = self.dense
        return None if ws is None or ws.active_share is None else list(ws.active_share)


def _workspace(buffers: StepBuffers, sae: SAE, y_BN: torch.Tensor) -> _Workspace:
    b, n = y_BN.shape
    key = (b, n, sae.dict_size, y_BN.device, y_BN.dtype)
    ws = buffers.dense
    if ws is None or ws.key != key:
        ws = buffers.dense = _Workspace.build(key, b, n, sae.dict_size, y_BN.device, y_BN.dtype)
    return ws


# Where the sparse path starts to win on one torch thread (a packed lane) and on more: the crossover
# measured by benchmarks/bench_sparse_step.py part (c) (table in benchmarks/README.md). On CUDA the
# sparse path is not measured yet: dense.
SPARSE_BELOW_ONE_THREAD = 0.15
SPARSE_BELOW_THREADS = 0.09


def auto_sparse_below(device: torch.device, threads: int) -> float:
    """The ``sparse_below`` used when the config leaves it null, for a step on ``device`` with ``threads`` torch threads."""
    if device.type != "cpu":
        return 0.0
    return SPARSE_BELOW_ONE_THREAD if threads <= 1 else SPARSE_BELOW_THREADS


def _ensure_grads(sae: SAE) -> None:
    for p in sae.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


@torch.no_grad()
def loss_and_grads(
    sae: SAE, y_BN: torch.Tensor, alpha_K: list[float], *, with_l1: bool = True, sparse_below: float = 0.0,
    skip: Collection[int] = (), buffers: StepBuffers,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fill every parameter's ``.grad`` with d(loss)/d(param) and return per-member (mse_K, l1_K).

    The gradients never need the L1 value itself; ``with_l1=False`` skips its one pass over the
    (B, J) codes and returns ``l1_K = None`` (a NaN anywhere still shows in ``mse_K``).

    ``y_BN`` is shared by all members; ``alpha_K`` holds each member's L1 coefficient. Gradients
    are overwritten, not accumulated (as after ``zero_grad`` and one ``backward``).

    A member whose share of active codes in this batch is below ``sparse_below`` finishes its
    step on the active codes alone (the sparse path in the module doc; same result); 0 never
    counts and keeps every member dense. The shares are then in ``buffers.active_share``.

    Members in ``skip`` (e.g. stopped ones whose result is already kept) cost nothing but zeroing
    their gradients; their mse and l1 are NaN.

    ``buffers``: the caller's :class:`StepBuffers` for this SAE (required; reused across its calls).
    """
    if y_BN.dim() != 2 or y_BN.shape[1] != sae.n:
        raise ValueError(f"y_BN must have shape (B, {sae.n}), got {tuple(y_BN.shape)}")
    if not 0.0 <= sparse_below <= 1.0:  # also rejects NaN
        raise ValueError(f"sparse_below must be a number in [0, 1], got {sparse_below!r}")
    _ensure_grads(sae)
    y_BN = y_BN.contiguous()
    b, n = y_BN.shape
    j = sae.dict_size
    ws = _workspace(buffers, sae, y_BN)
    c_BJ, dc_BJ, err_BN = ws.c_BJ, ws.dc_BJ, ws.err_BN
    s = 2.0 / (b * n)  # d mse / d z = s (z - y)
    mse_K = torch.empty(sae.k, device=y_BN.device)
    l1_K = torch.empty(sae.k, device=y_BN.device) if with_l1 else None
    has_b_dec = sae.decoder_bias
    shares = [] if sparse_below > 0.0 else None
    last = ws.active_share if ws.active_share is not None and len(ws.active_share) == sae.k else None
    max_sparse = sparse_below * b * j  # a member with fewer active codes takes the sparse path
    for k in range(sae.k):
        if k in skip:
            for p in sae.parameters():
                p.grad[k].zero_()
            mse_K[k] = math.nan
            if l1_K is not None:
                l1_K[k] = math.nan
            if shares is not None:
                shares.append(1.0)
            continue
        w_enc_NJ, w_dec_JN = sae.W_enc_KNJ[k], sae.W_dec_KJN[k]
        b_enc_1J, b_dec_1N = sae.b_enc_KJ[k : k + 1], sae.b_dec_KN[k : k + 1]
        g_enc_NJ, g_dec_JN = sae.W_enc_KNJ.grad[k], sae.W_dec_KJN.grad[k]
        g_benc_1J = sae.b_enc_KJ.grad[k : k + 1]

        x_BN = torch.sub(y_BN, b_dec_1N, out=err_BN) if has_b_dec else err_BN.copy_(y_BN)
        torch.mm(ws.ones_B1, b_enc_1J, out=c_BJ).addmm_(x_BN, w_enc_NJ)  # GEMM 1
        torch.threshold_(c_BJ, 0.0, 0.0)  # ReLU in place, writing +0.0 (see the module doc)
        if shares is not None:
            bits_BJ = c_BJ.view(_INT_OF_SIZE[c_BJ.element_size()])  # zero bits <=> inactive (threshold_)
            idx_A = None  # flat indices b J + j of the active codes, row-major
            if last is not None and last[k] < sparse_below:  # sparse last step: list, and count by listing
                idx_A = bits_BJ.view(-1).nonzero().view(-1)
                nnz = idx_A.numel()
            else:
                nnz = int(torch.count_nonzero(bits_BJ))  # the integer count is twice the float one's speed
            shares.append(nnz / (b * j))
            if nnz < max_sparse:
                if idx_A is None:
                    idx_A = bits_BJ.view(-1).nonzero().view(-1)
                with torch_threads(1 if c_BJ.device.type == "cpu" else None):  # the O(|A|) kernels: module doc
                    _sparse_member(sae, k, ws, y_BN, alpha_K[k], mse_K, l1_K, idx_A)
                continue
            del idx_A  # a dense member after all: its list is not needed
        if l1_K is not None:
            l1_K[k] = c_BJ.sum() / (b * j)  # c >= 0, so |c| = c
        err_BN.addmm_(c_BJ, w_dec_JN, beta=-1.0)  # GEMM 2: err = z - y, x overwritten
        mse_K[k] = torch.linalg.vector_norm(err_BN).square() / (b * n)

        if alpha_K[k] != 0.0:  # d(alpha mean c)/dc on a rank-1 fill, then GEMM 3 accumulates onto it
            torch.mm(ws.ones_B1, ws.fill_1J.fill_(alpha_K[k] / (b * j)), out=dc_BJ)
            dc_BJ.addmm_(err_BN, w_dec_JN.T, alpha=s)
        else:
            dc_BJ.addmm_(err_BN, w_dec_JN.T, beta=0.0, alpha=s)  # GEMM 3 alone
        _threshold_backward(dc_BJ, c_BJ, 0.0, grad_input=dc_BJ)  # dpre: zero where c <= 0

        g_dec_JN.addmm_(c_BJ.T, err_BN, beta=0.0, alpha=s)  # GEMM 4
        torch.mm(ws.ones_1B, dc_BJ, out=g_benc_1J)  # db_enc = column sums of dpre
        torch.mm(y_BN.T, dc_BJ, out=g_enc_NJ)  # GEMM 5 on y, not x ...
        if has_b_dec:
            g_enc_NJ.addmm_(b_dec_1N.T, g_benc_1J, alpha=-1.0)  # ... so subtract b_dec db_enc^T
            g_bdec_1N = sae.b_dec_KN.grad[k : k + 1]
            torch.mm(ws.ones_1B, err_BN, out=g_bdec_1N).mul_(s)  # 1^T dz
            g_bdec_1N.addmm_(g_benc_1J, w_enc_NJ.T, alpha=-1.0)  # minus W_enc db_enc
    ws.active_share = shares
    return mse_K, l1_K


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch warns once that sparse CSR support is "in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)


def _sparse_member(
    sae: SAE, k: int, ws: _Workspace, y_BN: torch.Tensor, alpha: float, mse_K: torch.Tensor,
    l1_K: torch.Tensor | None, idx_A: torch.Tensor,
) -> None:
    """Member k's step after GEMM 1 (codes in ws.c_BJ, x in ws.err_BN) on its active codes alone.

    ``idx_A`` holds the flat indices b J + j of the active codes in row-major order.
    """
    b, n = y_BN.shape
    j = sae.dict_size
    s = 2.0 / (b * n)
    w_enc_NJ, w_dec_JN = sae.W_enc_KNJ[k], sae.W_dec_KJN[k]
    g_enc_NJ, g_dec_JN, g_benc_J = sae.W_enc_KNJ.grad[k], sae.W_dec_KJN.grad[k], sae.b_enc_KJ.grad[k]

    # The active codes in sample-major order (A, as listed) and in latent-major order (A sorted
    # stably by latent, so each latent's samples stay in order). Each weighted sum over A is an
    # embedding_bag: bags are samples for z, latents for the two weight gradients.
    c_A = ws.c_BJ.view(-1)[idx_A]
    int32 = ws.index_dtype == torch.int32
    crow_B1 = torch.searchsorted(idx_A, ws.row_starts_B1, out_int32=int32)  # sample b's codes: A[crow[b] : crow[b + 1]]
    row_A = idx_A.div(j, rounding_mode="floor").to(ws.index_dtype)
    col_A = idx_A.remainder_(j).to(ws.index_dtype)  # the flat index is not needed any more
    col_T, perm_T = torch.sort(col_A, stable=True)  # (|A|,): A in latent-major order
    ccol_J1 = torch.searchsorted(col_T, ws.col_starts_J1, out_int32=int32)  # latent j's: A_T[ccol[j] : ccol[j + 1]]
    row_T = row_A[perm_T]
    if l1_K is not None:
        l1_K[k] = c_A.sum() / (b * j)

    # err = z - y = c_A @ W_dec - x, x overwritten
    z_BN = _bag_sum(w_dec_JN, col_A, crow_B1, c_A)
    err_BN = torch.sub(z_BN, ws.err_BN, out=ws.err_BN)
    mse_K[k] = torch.linalg.vector_norm(err_BN).square() / (b * n)
    # dpre on A: s (err @ W_dec^T) sampled at A, plus the L1 term's alpha / (B J)
    c_csr = _csr(crow_B1, col_A, c_A, (b, j))
    dpre_A = torch.sparse.sampled_addmm(c_csr, err_BN, w_dec_JN.T, beta=0.0, alpha=s).values()
    if alpha != 0.0:
        dpre_A.add_(alpha / (b * j))

    c_T = c_A[perm_T].mul_(s)
    g_dec_JN.copy_(_bag_sum(err_BN, row_T, ccol_J1, c_T))  # s c^T err = c^T dz
    g_benc_J.zero_().index_add_(0, col_A, dpre_A)  # column sums of dpre
    g_enc_NJ.copy_(_bag_sum(y_BN, row_T, ccol_J1, dpre_A[perm_T]).T)  # (dpre^T y)^T
    if sae.decoder_bias:  # as in the dense path: x = y - b_dec, and 1^T dz - W_enc db_enc
        b_dec_1N, g_benc_1J = sae.b_dec_KN[k : k + 1], g_benc_J[None]
        g_enc_NJ.addmm_(b_dec_1N.T, g_benc_1J, alpha=-1.0)
        g_bdec_1N = sae.b_dec_KN.grad[k : k + 1]
        torch.mm(ws.ones_1B, err_BN, out=g_bdec_1N).mul_(s)
        g_bdec_1N.addmm_(g_benc_1J, w_enc_NJ.T, alpha=-1.0)


def _bag_sum(rows: torch.Tensor, index: torch.Tensor, starts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[i] = sum over t in [starts[i], starts[i + 1]) of weight[t] rows[index[t]] (empty bags give 0)."""
    return torch.nn.functional.embedding_bag(index, rows, starts, mode="sum", per_sample_weights=weight,
                                             include_last_offset=True)


@dataclass
class _StackedWorkspace:
    """Buffers of one stacked step (K, B, N, J), and the per-member constants of its L1 term."""

    key: tuple
    x_KBN: torch.Tensor
    c_KBJ: torch.Tensor
    dc_KBJ: torch.Tensor
    err_KBN: torch.Tensor
    stream_K: torch.Tensor  # int64: which batch slice each member reads
    fill_K1J: torch.Tensor  # alpha_k / (B J_k), broadcast over the batch: GEMM 3 accumulates onto it
    inv_bj_K: torch.Tensor  # 1 / (B J_k): the L1 term's mean over each member's own latents


def _stacked_workspace(buffers: StepBuffers, sae: SAE, y_SBN: torch.Tensor, stream_K: Sequence[int],
                       alpha_K: Sequence[float]) -> _StackedWorkspace:
    _, b, n = y_SBN.shape
    key = (b, n, sae.k, sae.dict_size, tuple(sae.sizes_K), tuple(stream_K), tuple(alpha_K), y_SBN.device, y_SBN.dtype)
    ws = buffers.stacked
    if ws is None or ws.key != key:
        kw = {"device": y_SBN.device, "dtype": y_SBN.dtype}
        k, j = sae.k, sae.dict_size
        j_K = torch.tensor(sae.sizes_K, dtype=torch.float64)
        fill = (torch.tensor(alpha_K, dtype=torch.float64) / (b * j_K)).to(**kw)
        ws = _StackedWorkspace(key, torch.empty(k, b, n, **kw), torch.empty(k, b, j, **kw), torch.empty(k, b, j, **kw),
                               torch.empty(k, b, n, **kw), torch.tensor(list(stream_K), device=y_SBN.device),
                               fill.view(k, 1, 1).expand(k, 1, j).contiguous(), (1.0 / (b * j_K)).to(**kw))
        buffers.stacked = ws
    return ws


@torch.no_grad()
def loss_and_grads_stacked(
    sae: SAE, y_SBN: torch.Tensor, stream_K: Sequence[int], alpha_K: Sequence[float], *, with_l1: bool = True,
    buffers: StepBuffers,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stacked step (module doc): every member's gradients in ``.grad`` and (mse_K, l1_K).

    ``y_SBN`` holds one batch per stream; member k reads ``y_SBN[stream_K[k]]``. Same contract as
    :func:`loss_and_grads` otherwise (gradients overwritten; ``with_l1=False`` returns l1_K None;
    ``buffers`` the caller's, required).
    """
    if y_SBN.dim() != 3 or y_SBN.shape[2] != sae.n:
        raise ValueError(f"y_SBN must have shape (S, B, {sae.n}), got {tuple(y_SBN.shape)}")
    if len(stream_K) != sae.k or len(alpha_K) != sae.k:
        raise ValueError(f"stream_K and alpha_K need one entry per member ({sae.k}), got {len(stream_K)}, {len(alpha_K)}")
    _ensure_grads(sae)
    _, b, n = y_SBN.shape
    s = 2.0 / (b * n)  # d mse / d z = s (z - y)
    ws = _stacked_workspace(buffers, sae, y_SBN, stream_K, alpha_K)
    w_enc_KNJ, w_dec_KJN, b_enc_K1J = sae.W_enc_KNJ, sae.W_dec_KJN, sae.b_enc_KJ[:, None, :]
    g_enc_KNJ, g_dec_KJN, g_benc_KJ = sae.W_enc_KNJ.grad, sae.W_dec_KJN.grad, sae.b_enc_KJ.grad

    x_KBN = torch.index_select(y_SBN, 0, ws.stream_K, out=ws.x_KBN)
    if sae.decoder_bias:
        x_KBN.sub_(sae.b_dec_KN[:, None, :])
    c_KBJ = torch.baddbmm(b_enc_K1J, x_KBN, w_enc_KNJ, out=ws.c_KBJ)  # GEMM 1
    torch.threshold_(c_KBJ, 0.0, 0.0)  # ReLU in place (padding: pre-activation exactly 0, never fires)
    l1_K = c_KBJ.sum(dim=(1, 2)).mul_(ws.inv_bj_K) if with_l1 else None  # c >= 0, so |c| = c
    err_KBN = torch.baddbmm(x_KBN, c_KBJ, w_dec_KJN, beta=-1.0, out=ws.err_KBN)  # GEMM 2: err = z - y
    mse_K = torch.linalg.vector_norm(err_KBN, dim=(1, 2)).square_().div_(b * n)
    dc_KBJ = torch.baddbmm(ws.fill_K1J, err_KBN, w_dec_KJN.transpose(1, 2), alpha=s, out=ws.dc_KBJ)  # GEMM 3
    _threshold_backward(dc_KBJ, c_KBJ, 0.0, grad_input=dc_KBJ)  # dpre: zero where c <= 0
    torch.baddbmm(g_dec_KJN, c_KBJ.transpose(1, 2), err_KBN, beta=0.0, alpha=s, out=g_dec_KJN)  # GEMM 4
    torch.sum(dc_KBJ, dim=1, out=g_benc_KJ)  # db_enc
    torch.bmm(x_KBN.transpose(1, 2), dc_KBJ, out=g_enc_KNJ)  # GEMM 5
    if sae.decoder_bias:  # 1^T dz - W_enc db_enc
        g_bdec_KN = sae.b_dec_KN.grad
        torch.sum(err_KBN, dim=1, out=g_bdec_KN).mul_(s)
        g_bdec_K1N = g_bdec_KN[:, None, :]
        g_bdec_K1N.baddbmm_(g_benc_KJ[:, None, :], w_enc_KNJ.transpose(1, 2), alpha=-1.0)
    return mse_K, l1_K
