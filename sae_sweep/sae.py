"""The sparse autoencoder z(y) = D ReLU(W (y - b_dec) + b_enc) + b_dec, K members of one shape.

Every parameter carries a leading member axis K, so K SAEs with the same (n, J) are one module
and can train as one group on shared batches; K = 1 is a single SAE. Decoder atoms (the columns
of D in the paper's notation) are stored as rows of ``W_dec_KJN`` and kept at unit norm.

A *padded* stack holds members of different sizes J_k <= J (``sizes_K``): member k's latents
J_k..J-1 are padding, their encoder columns, encoder biases and decoder rows exactly zero. Their
pre-activation is then exactly 0, so the ReLU never fires them; their gradients are exactly zero
(the ReLU's derivative is 0 there, and c = 0 multiplies their decoder rows), Adam's moments stay
zero and so does its update, and unit-norm rescaling leaves a zero row zero: the padding stays
zero through training without any masking pass. Every view that leaves the module (``member``,
``dictionary``, ``save``) cuts member k back to its own J_k.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sae_sweep.record import (
    MAX_DIM,
    SAE_CFG_FILE,
    WEIGHTS_FILE,
    RecordError,
    load_json_object,
    single_line,
    tensor_header,
)


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
        self.sizes_K = [dict_size] * k  # each member's own J (a padded stack: see the module doc)
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
        """Per-member (loss, mse, l1), each (K,), with the project's normalisation (see config.LOSS_NORMALISATIONS)."""
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
    @property
    def padded(self) -> bool:
        """Some member is smaller than the stack's J (its last latents are padding)."""
        return any(j != self.dict_size for j in self.sizes_K)

    def latent_mask_KJ(self) -> torch.Tensor:
        """(K, J) bool: True on each member's own latents, False on its padding."""
        j_K = torch.tensor(self.sizes_K, device=self.W_dec_KJN.device)
        return torch.arange(self.dict_size, device=j_K.device)[None, :] < j_K[:, None]

    def member(self, i: int) -> SAE:
        """A detached single-member copy of member i, at its own size."""
        out = SAE(self.n, self.sizes_K[i], 1, decoder_bias=self.decoder_bias, device=self.W_dec_KJN.device)
        copy_members_(out, self, [i])
        return out

    @classmethod
    def stack(cls, members: list[SAE], pad: bool = False) -> SAE:
        """One K-member SAE whose member i is a copy of ``members[i]`` (all on one device).

        Without ``pad`` all must have one shape; with it they may differ in J and are padded to the
        largest (zero padding, ``sizes_K``: see the module doc).
        """
        first = members[0]
        for m in members:
            if m.n != first.n or m.decoder_bias != first.decoder_bias or (
                    not pad and m.dict_size != first.dict_size):
                raise ValueError(f"cannot stack SAEs of shapes (n={m.n}, J={m.dict_size}) and "
                                 f"(n={first.n}, J={first.dict_size}) or with different decoder_bias"
                                 + ("" if pad else " (pad=True stacks different J)"))
        sizes = [j for m in members for j in m.sizes_K]
        out = cls(first.n, max(m.dict_size for m in members), len(sizes), decoder_bias=first.decoder_bias,
                  device=first.W_dec_KJN.device)
        with torch.no_grad():
            for t in out.state_dict().values():
                t.zero_()
        out.sizes_K = sizes
        k = 0
        for m in members:
            copy_members_(out, m, list(range(m.k)), at=k)
            k += m.k
        return out

    def dictionary(self, i: int = 0) -> torch.Tensor:
        """Member i's decoder atoms, (J_i, N), unit norm."""
        return self.W_dec_KJN[i, : self.sizes_K[i]].detach()

    # --- persistence (safetensors + cfg.json; never pickle) ---------------------------------------
    def save(self, directory: Path | str, i: int = 0, extra: dict | None = None) -> None:
        """Write member i (at its own J) to ``directory/sae.safetensors`` and its shape to ``directory/cfg.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        j = self.sizes_K[i]
        tensors = {
            "W_enc": self.W_enc_KNJ[i, :, :j].detach().T.contiguous().cpu(),  # (J, N): W in c = ReLU(W y + b)
            "b_enc": self.b_enc_KJ[i, :j].detach().contiguous().cpu(),
            "W_dec": self.W_dec_KJN[i, :j].detach().T.contiguous().cpu(),  # (N, J): D, unit-norm columns
            "b_dec": self.b_dec_KN[i].detach().contiguous().cpu(),
        }
        save_file(tensors, str(directory / WEIGHTS_FILE))
        cfg = {"n": self.n, "dict_size": j, "decoder_bias": self.decoder_bias,
               "layout": "W_enc (J, N), W_dec (N, J), columns of W_dec are the unit-norm atoms",
               "forward": "z = W_dec @ relu(W_enc @ (y - b_dec) + b_enc) + b_dec"}
        (directory / SAE_CFG_FILE).write_text(json.dumps({**cfg, **(extra or {})}, indent=2))

    @classmethod
    def load(cls, directory: Path | str, device: torch.device | str = "cpu") -> SAE:
        """Read an SAE written by :meth:`save` (a single member). ``cfg.json`` is checked against the
        tensors' header before anything is allocated; a bad record raises record.RecordError."""
        directory = Path(directory)
        cfg = load_json_object(directory / SAE_CFG_FILE)
        n, j, bias = cfg.get("n"), cfg.get("dict_size"), cfg.get("decoder_bias", True)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DIM for v in (n, j)):
            raise RecordError(directory / SAE_CFG_FILE, f"n and dict_size must be integers in [1, {MAX_DIM}], "
                                                        f"got {n!r} and {j!r}")
        if not isinstance(bias, bool):
            raise RecordError(directory / SAE_CFG_FILE, f"decoder_bias must be true or false, got {bias!r}")
        path = directory / WEIGHTS_FILE
        expected = {"W_enc": (j, n), "W_dec": (n, j), "b_enc": (j,), "b_dec": (n,)}
        header = tensor_header(path)
        for name, shape in expected.items():
            if name not in header or header[name][1] != shape or header[name][0] != "F32":
                got = header.get(name)
                raise RecordError(path, f"{name} must be F32 of shape {list(shape)} (cfg.json: n={n}, dict_size={j}), "
                                        f"got {'none' if got is None else f'{got[0]} {list(got[1])}'}")
        try:
            t = load_file(str(path), device=str(device))
        except Exception as exc:  # safetensors' own error types for a damaged body
            raise RecordError(path, f"not readable ({type(exc).__name__}: {single_line(exc)})") from None
        sae = cls(n, j, 1, decoder_bias=bias, device=device)
        with torch.no_grad():
            sae.W_enc_KNJ.copy_(t["W_enc"].T[None])
            sae.b_enc_KJ.copy_(t["b_enc"][None])
            sae.W_dec_KJN.copy_(t["W_dec"].T[None])
            sae.b_dec_KN.copy_(t["b_dec"][None])
        return sae


@torch.no_grad()
def copy_members_(dst: SAE, src: SAE, members: list[int], at: int = 0) -> None:
    """dst's members at, at + 1, ... become copies of src's ``members`` (each member's common latents;
    dst's other latents keep their values, zero in a fresh padded stack)."""
    copy_member_tensors_(dict(dst.named_buffers()) | dict(dst.named_parameters()),
                         dict(src.named_buffers()) | dict(src.named_parameters()), members, at)
    for i, k in enumerate(members):
        dst.sizes_K[at + i] = src.sizes_K[k]


def copy_member_tensors_(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor], members: list[int],
                         at: int = 0) -> None:
    """For tensors with a leading member axis (parameters, or Adam's moments of them): dst[name][at + i]
    takes src[name][members[i]] on their common region (J cut to the smaller of the two)."""
    for name, t in dst.items():
        s = src[name]
        region = tuple(slice(0, min(a, b)) for a, b in zip(t.shape[1:], s.shape[1:], strict=True))
        for i, k in enumerate(members):
            t[(at + i, *region)] = s[(k, *region)]
