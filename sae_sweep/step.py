"""Hand-written forward and backward of the SAE loss: five GEMMs and two elementwise passes.

Autograd keeps every intermediate and runs separate elementwise kernels for ReLU, its mask, the
L1 term and the bias reductions; at B=4096 those memory-bound passes cost a quarter of the step
(more at large J). Here each member's step is

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
region, and when another process holds a core each region waits out a scheduler slice (~12 ms),
whatever its size. Bias fills, column sums and the rank-1 correction therefore go through BLAS
(which does not pay that wait), only ReLU, its mask and ``y - b_dec`` remain elementwise, the
full reductions (L1, MSE) use torch's reduction kernels, and every (B, J) and (B, N) buffer is
allocated once and reused across steps (fresh 64 MB tensors cost page faults on every step).

The result equals autograd's through ``SAE.loss`` to float tolerance (tests/test_step.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from sae_sweep.sae import SAE

_threshold_backward = torch.ops.aten.threshold_backward.grad_input


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

    @classmethod
    def build(cls, key: tuple, b: int, n: int, j: int, device: torch.device, dtype: torch.dtype) -> _Workspace:
        kw = {"device": device, "dtype": dtype}
        ones = torch.ones(b, 1, **kw)
        return cls(key, torch.empty(b, j, **kw), torch.empty(b, j, **kw), torch.empty(b, n, **kw),
                   ones, ones.view(1, b), torch.empty(1, j, **kw))


# One workspace per SAE, dropped with it (no module-level growth across tests or sweeps).
_WORKSPACES: weakref.WeakKeyDictionary[SAE, _Workspace] = weakref.WeakKeyDictionary()


def _workspace(sae: SAE, y_BN: torch.Tensor) -> _Workspace:
    b, n = y_BN.shape
    key = (b, n, sae.dict_size, y_BN.device, y_BN.dtype)
    ws = _WORKSPACES.get(sae)
    if ws is None or ws.key != key:
        ws = _Workspace.build(key, b, n, sae.dict_size, y_BN.device, y_BN.dtype)
        _WORKSPACES[sae] = ws
    return ws


def _ensure_grads(sae: SAE) -> None:
    for p in sae.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


@torch.no_grad()
def loss_and_grads(
    sae: SAE, y_BN: torch.Tensor, alpha_K: list[float], *, with_l1: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fill every parameter's ``.grad`` with d(loss)/d(param) and return per-member (mse_K, l1_K).

    The gradients never need the L1 value itself; ``with_l1=False`` skips its one pass over the
    (B, J) codes and returns ``l1_K = None`` (a NaN anywhere still shows in ``mse_K``).

    ``y_BN`` is shared by all members; ``alpha_K`` holds each member's L1 coefficient. Gradients
    are overwritten, not accumulated (as after ``zero_grad`` and one ``backward``).
    """
    if y_BN.dim() != 2 or y_BN.shape[1] != sae.n:
        raise ValueError(f"y_BN must have shape (B, {sae.n}), got {tuple(y_BN.shape)}")
    _ensure_grads(sae)
    y_BN = y_BN.contiguous()
    b, n = y_BN.shape
    j = sae.dict_size
    ws = _workspace(sae, y_BN)
    c_BJ, dc_BJ, err_BN = ws.c_BJ, ws.dc_BJ, ws.err_BN
    s = 2.0 / (b * n)  # d mse / d z = s (z - y)
    mse_K = torch.empty(sae.k, device=y_BN.device)
    l1_K = torch.empty(sae.k, device=y_BN.device) if with_l1 else None
    has_b_dec = sae.decoder_bias
    for k in range(sae.k):
        w_enc_NJ, w_dec_JN = sae.W_enc_KNJ[k], sae.W_dec_KJN[k]
        b_enc_1J, b_dec_1N = sae.b_enc_KJ[k : k + 1], sae.b_dec_KN[k : k + 1]
        g_enc_NJ, g_dec_JN = sae.W_enc_KNJ.grad[k], sae.W_dec_KJN.grad[k]
        g_benc_1J = sae.b_enc_KJ.grad[k : k + 1]

        x_BN = torch.sub(y_BN, b_dec_1N, out=err_BN) if has_b_dec else err_BN.copy_(y_BN)
        torch.mm(ws.ones_B1, b_enc_1J, out=c_BJ).addmm_(x_BN, w_enc_NJ).relu_()  # GEMM 1
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
    return mse_K, l1_K
