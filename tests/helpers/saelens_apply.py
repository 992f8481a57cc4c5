"""Runs in the SAELens environment (never the project's): load an exported dir, apply it to inputs.

    python saelens_apply.py SAE_DIR INPUTS OUT

INPUTS is a safetensors file with ``y`` (B, N); OUT gets ``codes`` (B, J) and ``recon`` (B, N) as
SAELens computes them (``SAE.load_from_disk(SAE_DIR)``, ``encode``, ``decode``). Prints the version.
"""

import sys

import sae_lens
import torch
from safetensors.torch import load_file, save_file

sae_dir, inputs, out = sys.argv[1:4]
sae = sae_lens.SAE.load_from_disk(sae_dir)
y = load_file(inputs)["y"]
with torch.no_grad():
    codes = sae.encode(y)
    recon = sae.decode(codes)
save_file({"codes": codes.contiguous(), "recon": recon.contiguous()}, out)
print(f"sae_lens {sae_lens.__version__} {type(sae).__name__}")
