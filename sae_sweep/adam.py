"""Adam for the trainer's groups: torch's fused Adam kernel, without ``torch.optim``'s start-up cost.

``torch.optim.Optimizer.__init__`` imports ``torch._dynamo`` on first use (about 1.2 s of a 2-core machine's
time in every process, more than a small run's training), so each sweep process, Optuna worker and test
subprocess paid it once. This class calls the same kernel ``torch.optim.Adam(fused=True)`` calls
(``torch._fused_adam_``; devices without it: the same update in ``torch._foreach_*`` ops) over a fixed list
of parameters, and keeps its state the way ``torch.optim.Adam`` does (``state[p]`` holds ``step``,
``exp_avg`` and ``exp_avg_sq``, made at a parameter's first step), so checkpoints and the
member-by-member copies in train.py / checkpoint.py read and write it unchanged. No weight decay,
amsgrad or closures: the trainer uses none. Bit-identical to ``torch.optim.Adam(fused=True)``
(tests/unit/test_adam.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")


class Adam:
    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, fused: bool | None = None):
        """``fused``: use torch's fused kernel (default: when every parameter is on a device that has it)."""
        self.params = list(params)
        if not self.params:
            raise ValueError("Adam needs at least one parameter, got none")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr, self.betas, self.eps = lr, betas, eps
        self.fused = all(p.device.type in FUSED_DEVICES for p in self.params) if fused is None else fused
        # torch.optim.Adam's layout; ``fused`` tells checkpoint.py where the step counts live.
        self.defaults = {"lr": lr, "betas": betas, "eps": eps, "fused": self.fused}
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state[p]
        if not st:  # as torch.optim.Adam: made at the parameter's first step
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        live = [p for p in self.params if p.grad is not None]
        if not live:
            return
        states = [self._state(p) for p in live]
        grads = [p.grad for p in live]
        exp_avgs = [st["exp_avg"] for st in states]
        exp_avg_sqs = [st["exp_avg_sq"] for st in states]
        steps = [st["step"] for st in states]
        beta1, beta2 = self.betas
        if self.fused:
            for idx in _by_device_and_dtype(live):
                torch._foreach_add_([steps[i] for i in idx], 1)
                torch._fused_adam_([live[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                                   [exp_avg_sqs[i] for i in idx], [], [steps[i] for i in idx], amsgrad=False,
                                   lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps,
                                   maximize=False, grad_scale=None, found_inf=None)
            return
        # Other devices: the textbook update (torch.optim.Adam's single-tensor order of operations).
        for p, g, m, v, t in zip(live, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
            t += 1
            k = int(t.item())
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**k)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - beta1**k))


def _by_device_and_dtype(params: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype): the fused kernel takes one device and dtype per call."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return list(groups.values())
