"""The generalization study's table: per toy setting, the true h, each signal, the consensus and the verdict.

    python scripts/generalization_table.py [a b c ...]     (reads outputs/gen_<x>/; default: every setting)

Settings a-z are the tuning set, aa-ac the held-back half (conf/experiment/gen_base.yaml). Prints a
markdown table and the issue's targets checked on each half: no TRUSTED consensus outside 10 % of h,
every signal within 10 % of h on every TRUSTED setting (a signal the verdict outvoted as dissent
counts against this), and the share of settings TRUSTED.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

# a-z chose the rules (q-z were held back until round 6 studied them); aa-ac are held back from round 6
TUNING, HELD_BACK = (*"abcdefghijklmnopqrstuvwxyz", "aa", "ab", "ac", "ad"), ("ae", "af", "ag")  # ad tuned on in round 8
SIGNALS = ("dead_latents", "loss_basin", "dictionary_agreement")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sae_sweep.record import COMPLETED, ESTIMATES_FILE, RESULTS_FILE  # noqa: E402


def _setting(name: str) -> dict:
    recipe = yaml.safe_load((ROOT / "conf" / "experiment" / f"gen_{name}.yaml").read_text())
    if "data" not in recipe:  # a variant of another setting (gen_ae_3x: defaults gen_ae, other train settings)
        parent = next(d for d in recipe["defaults"] if isinstance(d, str) and d.startswith("gen_") and d != "gen_base")
        return _setting(parent.removeprefix("gen_"))
    data = recipe["data"]
    return {"n": data["n"], "h": data["h"], "decay": data["decay"], "corr": data["correlation"],
            "active": data["mean_active"], "extra": ", ".join(f"{k} {v}" for k, v in data.items()
                                                             if k in ("magnitude_decay", "noise_std"))}


def _row(name: str) -> dict | None:
    sweep = ROOT / "outputs" / f"gen_{name}"
    if not (sweep / ESTIMATES_FILE).exists():
        return None
    (group,) = json.loads((sweep / ESTIMATES_FILE).read_text())["groups"]
    runs = pd.read_parquet(sweep / RESULTS_FILE)
    done = runs[runs["status"] == COMPLETED]
    values = {e["signal"]: e["value"] for e in group["estimates"]}
    h = group["true_h"]
    verdict = (group.get("verdict") or {}).get("verdict", "-")
    given = [v for v in values.values() if v is not None]
    return {"setting": name, "half": "tuning" if name in TUNING else "held-back", **_setting(name),
            **{s: values.get(s) for s in SIGNALS}, "consensus": group["consensus"], "verdict": verdict,
            "reasons": "; ".join((group.get("verdict") or {}).get("reasons", [])),
            "dissent": ", ".join(f"{k} {v:.0f}" for k, v in
                                 (((group.get("verdict") or {}).get("checks") or {}).get("dissent") or {}).items()),
            "alphas": ", ".join(f"{a:g}" for a in (group.get("alpha_selection") or {}).get("used", [])),
            "worst_error": max((abs(v - h) / h for v in given), default=float("nan")),
            "consensus_error": abs(group["consensus"] - h) / h if group["consensus"] else float("nan"),
            "runs": len(done), "converged": float(done["converged"].astype(bool).mean()) if "converged" in done else None,
            "samples_M": float(done["samples"].sum()) / 1e6,
            # first start to last finish: packed members share their pack's wall time, so no sum of runs
            "train_min": (done["finished_at"].max() - done["started_at"].min()).total_seconds() / 60}


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.0f}" if isinstance(v, float) else str(v)


def main(names: list[str]) -> None:
    rows = [r for r in (_row(n) for n in names) if r is not None]
    if not rows:
        sys.exit("generalization_table: no outputs/gen_<x>/estimates.json yet")
    print("| setting | half | n | h | h/n | decay | corr | active | other | dead_latents | loss_basin | agreement | "
          "consensus | error | verdict | dissent | working alphas | runs | converged | samples | wall span |")
    print("|" + "---|" * 21)
    for r in rows:
        print(f"| {r['setting']} | {r['half']} | {r['n']} | {r['h']} | {r['h'] / r['n']:.2g} | {r['decay']} | "
              f"{r['corr']:g} | {r['active']:g} | {r['extra'] or '-'} | {_fmt(r['dead_latents'])} | "
              f"{_fmt(r['loss_basin'])} | {_fmt(r['dictionary_agreement'])} | {_fmt(r['consensus'])} | "
              f"{r['consensus_error']:.0%} | {r['verdict']} | {r['dissent'] or '-'} | {r['alphas']} | {r['runs']} | "
              f"{r['converged']:.0%} | {r['samples_M']:.0f} M | {r['train_min']:.0f} min |")
    print()
    for r in rows:
        if r["verdict"] != "TRUSTED":
            print(f"- {r['setting']}: {r['verdict']}: {r['reasons']}")
    for half in ("tuning", "held-back"):
        part = [r for r in rows if r["half"] == half]
        if not part:
            continue
        trusted = [r for r in part if r["verdict"] == "TRUSTED"]
        wrong = [r["setting"] for r in trusted if not r["consensus_error"] <= 0.1]
        off = [r["setting"] for r in trusted if not r["worst_error"] <= 0.1]
        print(f"{half}: {len(trusted)} of {len(part)} TRUSTED; TRUSTED with the consensus off by more than 10 %: "
              f"{', '.join(wrong) or 'none'}; TRUSTED with some signal off by more than 10 %: {', '.join(off) or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1:] or [*TUNING, *HELD_BACK])
