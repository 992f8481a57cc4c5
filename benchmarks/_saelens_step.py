"""SAELens's standard training step, driven over a pipe by bench_sparse_step.py (part b).

Runs in its own virtual environment (benchmarks/.venv-saelens, where sae-lens is installed; the
project's .venv never gets it). Reads the weights and the batch that bench_sparse_step.py wrote
(safetensors), builds a ``StandardTrainingSAE`` with them and an ``SAETrainer``, then answers one
line per command on stdin:

    step   restore the starting weights, run ``SAETrainer.step(batch)``, answer "ok SECONDS"
           (the step's time; the restore is not timed)
    l0     answer the mean number of active latents per sample of the starting weights
    quit   exit

so the calling benchmark times SAELens's steps in the same interleaved rounds as its own cases.
Restoring the weights before every step (as the project's cases do) keeps the sparsity where it was
set, however many steps the timing runs.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from safetensors.torch import load_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="safetensors file: W_enc (N,J), b_enc, W_dec (J,N), b_dec, y")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--l1-coefficient", type=float, required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    t = load_file(args.weights)
    y_BN = t["y"]
    b, n = y_BN.shape
    j = t["W_enc"].shape[1]
    cfg = StandardTrainingSAEConfig(d_in=n, d_sae=j, dtype="float32", device="cpu",
                                    l1_coefficient=args.l1_coefficient)
    sae = StandardTrainingSAE(cfg)
    start = {name: t[name].contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    params = {name: getattr(sae, name) for name in start}

    def restore() -> None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(start[name])

    restore()
    trainer_cfg = SAETrainerConfig(total_training_samples=1 << 40, train_batch_size_samples=b, lr=args.lr,
                                   lr_end=args.lr, lr_scheduler_name="constant", device="cpu")
    trainer = SAETrainer(trainer_cfg, sae, data_provider=iter(()))
    print(f"ready sae-lens, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            restore()
            t0 = time.perf_counter()
            trainer.step(y_BN)
            print(f"ok {time.perf_counter() - t0!r}", flush=True)
        elif cmd == "l0":
            with torch.no_grad():
                restore()
                print(f"{(sae.encode(y_BN) > 0).sum(dim=-1).float().mean().item():.4f}", flush=True)
        elif cmd == "quit":
            break
        else:
            print(f"error: unknown command {cmd!r}", flush=True)


if __name__ == "__main__":
    main()
