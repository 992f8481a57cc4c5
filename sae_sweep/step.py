"""Hand-written forward and backward of the SAE loss: five GEMMs and a few elementwise passes.

Autograd keeps every intermediate and runs separate elementwise kernels for ReLU, its mask, the
L1 term and the bias reductions; at B=4096 those memory-bound passes cost a quarter of the step
(more at large J). Here each member's step is

    x    = y - b_dec                      (B, N)
    c    = relu(x @ W_enc + b_enc)        (B, J)   GEMM 1, ReLU in place
    z    = c @ W_dec + b_dec              (B, N)   GEMM 2
    dz   = 2 (z - y) / (B N)              (B, N)
    dc   = dz @ W_dec^T + alpha / (B J)   (B, J)   GEMM 3 (c >= 0, so d|c|/dc = 1 where c > 0)
    dpre = dc * [c > 0]                   (B, J)   one fused pass
    dW_dec = c^T @ dz                     (J, N)   GEMM 4
    dW_enc = x^T @ dpre                   (N, J)   GEMM 5
    db_enc = sum_b dpre;  db_dec = sum_b dz - W_enc db_enc

and the result equals autograd's to float tolerance (tests/test_step.py).
"""

from __future__ import annotations

import torch

from sae_sweep.sae import SAE


def _ensure_grads(sae: SAE) -> None:
    for p in sae.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


@torch.no_grad()
def loss_and_grads(sae: SAE, y_BN: torch.Tensor, alpha_K: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill every parameter's ``.grad`` with d(loss)/d(param) and return per-member (mse_K, l1_K).

    ``y_BN`` is shared by all members; ``alpha_K`` holds each member's L1 coefficient.
    """
    _ensure_grads(sae)
    b, n = y_BN.shape
    j = sae.dict_size
    mse_K = torch.empty(sae.k, device=y_BN.device)
    l1_K = torch.empty(sae.k, device=y_BN.device)
    has_b_dec = sae.decoder_bias
    for k in range(sae.k):
        w_enc, w_dec = sae.W_enc_KNJ[k], sae.W_dec_KJN[k]  # (N, J), (J, N)
        b_enc, b_dec = sae.b_enc_KJ[k], sae.b_dec_KN[k]
        x_BN = y_BN - b_dec if has_b_dec else y_BN
        c_BJ = torch.addmm(b_enc, x_BN, w_enc).relu_()  # GEMM 1
        err_BN = torch.addmm(b_dec, c_BJ, w_dec).sub_(y_BN)  # GEMM 2
        mse_K[k] = err_BN.pow(2).mean()
        l1_K[k] = c_BJ.sum() / (b * j)  # c >= 0
        dz_BN = err_BN.mul_(2.0 / (b * n))
        dc_BJ = torch.mm(dz_BN, w_dec.T)  # GEMM 3
        if alpha_K[k] != 0.0:
            dc_BJ.add_(alpha_K[k] / (b * j))
        dpre_BJ = torch.ops.aten.threshold_backward(dc_BJ, c_BJ, 0.0)  # zero where c <= 0
        torch.mm(c_BJ.T, dz_BN, out=sae.W_dec_KJN.grad[k])  # GEMM 4
        torch.mm(x_BN.T, dpre_BJ, out=sae.W_enc_KNJ.grad[k])  # GEMM 5
        db_enc_J = dpre_BJ.sum(dim=0)
        sae.b_enc_KJ.grad[k].copy_(db_enc_J)
        if has_b_dec:
            sae.b_dec_KN.grad[k].copy_(dz_BN.sum(dim=0) - w_enc @ db_enc_J)
    return mse_K, l1_K
