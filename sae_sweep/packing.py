"""How a pack's members are grouped into stacked computations: padded to a common J, bucketed by J,
or (large SAEs) today's per-member step. Pure arithmetic on sizes; imports no torch, hydra or optuna.

A group is one SAE whose members step together (train.py). Two kinds:

* **stacked** (``step.loss_and_grads_stacked``): the group's members, of any J and batch stream, run as
  one set of batched GEMMs, each member padded to the group's largest J. Its step costs a fixed
  per-step overhead (kernel calls, Python, Adam and the decoder constraint: about 15 + 10 calls)
  plus the padded GEMMs: ``OVERHEAD_S + 10 B N K J_max / rate``.
* **per member** (``step.loss_and_grads``): today's loop over members of one J and one stream, with
  the sparse path. Used for large SAEs, where each member's GEMMs dwarf the overhead and the sparse
  path pays off (n = 256, J >= 512: tables in benchmarks/README.md).

A member is *small* when B N J <= ``SMALL_BNJ`` (its step is mostly overhead). Small members are
sorted by J and cut into contiguous buckets by dynamic programming on the cost model: padding J=16
members to 32 costs a few GEMM microseconds and saves a whole group's overhead; padding 64 to 128
would double the GEMMs of the larger bucket. On CPU the rate is one core's batched-GEMM rate at
these shapes as benchmarks/bench_small_packs.py measures it (``COST`` below); on CUDA the overhead
dominates and everything small pads into one group. Buckets are then split by members until each
lane has a group (lanes step groups concurrently, one core each).
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_BNJ = 1 << 21  # B N J at most this: a small SAE (n=32, J<=256 at B=256)
# Cost model of one stacked group step (seconds), per device type: fixed overhead and GEMM rate.
COST = {"cpu": (2.5e-4, 6e10), "cuda": (1e-4, 1e13)}


@dataclass(frozen=True)
class Part:
    """One group of the pack: member indices (into the sizes given to :func:`plan`) and its step kind."""

    members: list[int]
    stacked: bool


def is_small(n: int, dict_size: int, batch_size: int) -> bool:
    return batch_size * n * dict_size <= SMALL_BNJ


def step_cost(k: int, j_max: int, n: int, batch_size: int, device: str = "cpu") -> float:
    """Modelled seconds of one stacked step of k members padded to j_max."""
    overhead, rate = COST.get(device, COST["cuda"])
    return overhead + 10.0 * batch_size * n * k * j_max / rate


def buckets(sizes: list[int], n: int, batch_size: int, device: str = "cpu") -> list[list[int]]:
    """Indices of ``sizes`` cut into groups of contiguous J (sorted) minimising the modelled step cost."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    js = [sizes[i] for i in order]
    # best[e]: cheapest cost of members order[:e]; cut[e]: where its last bucket starts. A bucket
    # never splits members of one J (they cost the same wherever they go).
    ends = [e for e in range(1, len(js) + 1) if e == len(js) or js[e] != js[e - 1]]
    best, cut = {0: 0.0}, {}
    for e in ends:
        for s in [0, *[x for x in ends if x < e]]:
            c = best[s] + step_cost(e - s, js[e - 1], n, batch_size, device)
            if e not in best or c < best[e]:
                best[e], cut[e] = c, s
    out, e = [], len(js)
    while e > 0:
        out.append(order[cut[e] : e])
        e = cut[e]
    return out[::-1]


def plan(sizes: list[int], streams: list[int], n: int, batch_size: int, lanes: int, device: str = "cpu",
         stacked: str = "auto") -> list[Part]:
    """The pack's groups for members of J ``sizes[i]`` reading batch stream ``streams[i]``.

    ``stacked``: ``auto`` stacks small members (bucketed as above) and steps large ones per member;
    ``always`` stacks every member; ``never`` keeps today's per-member groups (one J and one stream
    each) for all. Each kind is split until there are ``lanes`` groups where members allow.
    """
    if stacked not in ("auto", "always", "never"):
        raise ValueError(f"stacked must be auto, always or never, got {stacked!r}")
    small = [i for i, j in enumerate(sizes)
             if stacked == "always" or (stacked == "auto" and is_small(n, j, batch_size))]
    rest = [i for i in range(len(sizes)) if i not in set(small)]
    parts: list[Part] = []
    if small:
        groups = [[small[i] for i in b] for b in buckets([sizes[i] for i in small], n, batch_size, device)]
        cost = {id(g): step_cost(len(g), max(sizes[i] for i in g), n, batch_size, device) for g in groups}
        while len(groups) < lanes and any(len(g) > 1 for g in groups):  # split the costliest group in two
            g = max((g for g in groups if len(g) > 1), key=lambda g: cost[id(g)])
            groups.remove(g)
            g = sorted(g, key=lambda i: (sizes[i], i))
            for half in (g[0::2], g[1::2]):  # alternate: both halves keep the group's mix of J
                cost[id(half)] = step_cost(len(half), max(sizes[i] for i in half), n, batch_size, device)
                groups.append(half)
        parts += [Part(sorted(g), True) for g in groups]
    for key in sorted({(sizes[i], streams[i]) for i in rest}):
        same = [i for i in rest if (sizes[i], streams[i]) == key]
        n_parts = min(lanes, len(same))
        parts += [Part(same[r::n_parts], False) for r in range(n_parts)]
    return parts
