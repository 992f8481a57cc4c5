"""Draw toy settings for a held-back half of the generalization study at random (README, docs/generalization.md).

    python scripts/generalization_draw.py            # the second held-back half, i-l (seed 20261202)
    python scripts/generalization_draw.py --seed 20261203 --names m n o p   # the third, m-p
    python scripts/generalization_draw.py --seed 20261204 --names q r s t   # the fourth, q-t
    python scripts/generalization_draw.py --seed 20261205 --names u v --ratio 3 8   # the fifth, u-v
    python scripts/generalization_draw.py --seed 20261206 --names w x y z --ratio 3 8   # the sixth, w-z
    python scripts/generalization_draw.py --seed 20261207 --names aa ab ac --ratio 3 8   # the seventh, aa-ac
    python scripts/generalization_draw.py --seed 20261208 --names ad --ratio 3 8   # the eighth, ad
    python scripts/generalization_draw.py --seed 20261209 --names ae af ag --ratio 3 8   # the ninth, ae-ag

Prints one line per setting over the ranges the study must span: n in {32, 48, 64, 96, 128}, h/n
log-uniform in [1, 8] (h rounded to a multiple of 8, at least n), exponential / zipf / constant decay,
correlation in [0, 0.8], mean active in [3, 8], magnitude decay 0.995 on a third and noise 0.01 on a
third, and a factor-2 J grid whose smallest J is h/2, h/3 or h/4 rounded down to a power of two (so h
sits wherever it falls, usually between grid points). Drawing, not choosing, keeps the settings from
being picked to suit the rules; the recipes gen_<x>.yaml are written from its output before any runs.
``--ratio LO HI`` narrows the h/n range (still log-uniform): the fifth half draws only strong
superposition (h/n >= 3), which the fourth half's draw happened to leave out; so does the sixth.
"""

from __future__ import annotations

import argparse
import math
import random


def draw(rng: random.Random, ratio_lo: float = 1.0, ratio_hi: float = 8.0) -> dict[str, object]:
    n = rng.choice([32, 48, 64, 96, 128])
    ratio = 2 ** rng.uniform(math.log2(ratio_lo), math.log2(ratio_hi))
    h = max(n, int(round(n * ratio / 8)) * 8)
    setting = {"n": n, "h": h, "decay": rng.choice(["exponential", "zipf", "constant"]),
               "correlation": round(rng.uniform(0, 0.8), 1), "mean_active": round(rng.uniform(3, 8), 1),
               "magnitude_decay": rng.choice([1.0, 1.0, 0.995]), "noise_std": rng.choice([0.0, 0.0, 0.01])}
    lo = 2 ** math.floor(math.log2(h / rng.choice([2, 3, 4])))
    setting["grid"] = [lo * 2**k for k in range(5 if lo * 16 <= 1024 else 4)]
    return setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--names", nargs="*", default=list("ijkl"))
    ap.add_argument("--ratio", nargs=2, type=float, default=[1.0, 8.0], metavar=("LO", "HI"),
                    help="the h/n range, within [1, 8] (default: all of it)")
    args = ap.parse_args()
    lo, hi = args.ratio
    if not 1.0 <= lo <= hi <= 8.0:
        ap.error(f"--ratio: {lo} {hi} is outside 1 <= LO <= HI <= 8")
    rng = random.Random(args.seed)
    for name in args.names:
        print(name, draw(rng, lo, hi))


if __name__ == "__main__":
    main()
