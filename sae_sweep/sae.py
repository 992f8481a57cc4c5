"""The sparse autoencoder z(y) = D ReLU(W (y - b_dec) + b_enc) + b_dec, K members of one shape.

Every parameter carries a leading member axis K, so K SAEs with the same (n, J) are one module
and can train as one group on shared batches; K = 1 is a single SAE. Decoder atoms (the columns
of D in the paper's notation) are stored as rows of ``W_dec_KJN`` and kept at unit norm.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class SAE(nn.Module):
    def __init__(
        self,
        n: int,
        dict_size: int,
        k: int = 1,
        *,
        decoder_bias: bool = True,
        init_scale: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.n, self.dict_size, self.k = n, dict_size, k
        self.decoder_bias = decoder_bias
        w_dec = torch.randn(k, dict_size, n, generator=generator)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec_KJN = nn.Parameter(w_dec.to(device))
        # Encoder starts as the (scaled) transpose of the decoder: every latent begins aligned with its atom.
        self.W_enc_KNJ = nn.Parameter((init_scale * w_dec.transpose(1, 2)).contiguous().to(device))
        self.b_enc_KJ = nn.Parameter(torch.zeros(k, dict_size, device=device))
        b_dec = torch.zeros(k, n, device=device)
        if decoder_bias:
            self.b_dec_KN = nn.Parameter(b_dec)
        else:
            self.register_buffer("b_dec_KN", b_dec)

    # --- forward (autograd-friendly; training uses the hand-written step in step.py) ---------------
    def encode(self, y_BN: torch.Tensor) -> torch.Tensor:
        """Latent codes c, (K, B, J), for a batch y shared by all members, (B, N) or (K, B, N)."""
        x_KBN = y_BN - self.b_dec_KN[:, None, :]
        return torch.relu(torch.baddbmm(self.b_enc_KJ[:, None, :], x_KBN, self.W_enc_KNJ))

    def decode(self, c_KBJ: torch.Tensor) -> torch.Tensor:
        """Reconstruction z, (K, B, N)."""
        return torch.baddbmm(self.b_dec_KN[:, None, :], c_KBJ, self.W_dec_KJN)

    def forward(self, y_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_KBJ = self.encode(y_BN)
        return self.decode(c_KBJ), c_KBJ

    def loss(self, y_BN: torch.Tensor, alpha_K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-member (loss, mse, l1), each (K,), with the project's normalisation (see config.LOSS_NORMALISATION)."""
        z_KBN, c_KBJ = self(y_BN)
        mse_K = (z_KBN - y_BN).pow(2).mean(dim=(1, 2))
        l1_K = c_KBJ.abs().mean(dim=(1, 2))
        return mse_K + alpha_K * l1_K, mse_K, l1_K

    # --- constraint -------------------------------------------------------------------------------
    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Rescale every decoder atom to unit norm."""
        norms_KJ1 = torch.linalg.vector_norm(self.W_dec_KJN, dim=-1, keepdim=True)
        self.W_dec_KJN.div_(norms_KJ1.clamp_min_(1e-12))

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each atom's gradient its component along the atom (the norm is fixed anyway)."""
        g, w = self.W_dec_KJN.grad, self.W_dec_KJN
        g.addcmul_(torch.linalg.vecdot(g, w).unsqueeze_(-1), w, value=-1.0)

    # --- views ------------------------------------------------------------------------------------
    def member(self, i: int) -> SAE:
        """A detached single-member copy of member i."""
        out = SAE(self.n, self.dict_size, 1, decoder_bias=self.decoder_bias, device=self.W_dec_KJN.device)
        with torch.no_grad():
            for name, t in out.state_dict().items():
                t.copy_(self.state_dict()[name][i : i + 1])
        return out

    @classmethod
    def stack(cls, members: list[SAE]) -> SAE:
        """One K-member SAE whose member i is a copy of ``members[i]`` (all of one shape and device)."""
        first = members[0]
        for m in members:
            if (m.n, m.dict_size, m.decoder_bias) != (first.n, first.dict_size, first.decoder_bias):
                raise ValueError(f"cannot stack SAEs of shapes (n={m.n}, J={m.dict_size}) and "
                                 f"(n={first.n}, J={first.dict_size}) or with different decoder_bias")
        out = cls(first.n, first.dict_size, sum(m.k for m in members), decoder_bias=first.decoder_bias,
                  device=first.W_dec_KJN.device)
        with torch.no_grad():
            for name, t in out.state_dict().items():
                t.copy_(torch.cat([m.state_dict()[name] for m in members]))
        return out

    def dictionary(self, i: int = 0) -> torch.Tensor:
        """Member i's decoder atoms, (J, N), unit norm."""
        return self.W_dec_KJN[i].detach()

    # --- persistence (safetensors + cfg.json; never pickle) ---------------------------------------
    def save(self, directory: Path | str, i: int = 0, extra: dict | None = None) -> None:
        """Write member i to ``directory/sae.safetensors`` and its shape to ``directory/cfg.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "W_enc": self.W_enc_KNJ[i].detach().T.contiguous().cpu(),  # (J, N): W in c = ReLU(W y + b)
            "b_enc": self.b_enc_KJ[i].detach().contiguous().cpu(),
            "W_dec": self.W_dec_KJN[i].detach().T.contiguous().cpu(),  # (N, J): D, unit-norm columns
            "b_dec": self.b_dec_KN[i].detach().contiguous().cpu(),
        }
        save_file(tensors, str(directory / "sae.safetensors"))
        cfg = {"n": self.n, "dict_size": self.dict_size, "decoder_bias": self.decoder_bias,
               "layout": "W_enc (J, N), W_dec (N, J), columns of W_dec are the unit-norm atoms",
               "forward": "z = W_dec @ relu(W_enc @ (y - b_dec) + b_enc) + b_dec"}
        (directory / "cfg.json").write_text(json.dumps({**cfg, **(extra or {})}, indent=2))

    @classmethod
    def load(cls, directory: Path | str, device: torch.device | str = "cpu") -> SAE:
        """Read an SAE written by :meth:`save` (a single member)."""
        directory = Path(directory)
        cfg = json.loads((directory / "cfg.json").read_text())
        t = load_file(str(directory / "sae.safetensors"), device=str(device))
        sae = cls(cfg["n"], cfg["dict_size"], 1, decoder_bias=cfg["decoder_bias"], device=device)
        with torch.no_grad():
            sae.W_enc_KNJ.copy_(t["W_enc"].T[None])
            sae.b_enc_KJ.copy_(t["b_enc"][None])
            sae.W_dec_KJN.copy_(t["W_dec"].T[None])
            sae.b_dec_KN.copy_(t["b_dec"][None])
        return sae
