"""One stream of batches shared by concurrent lanes (threads) that each take every batch in order.

Imports no hydra, optuna or wandb.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import torch


class BatchFeed:
    """The shared batch stream, read step by step by lanes that run ahead of each other.

    Batch s is drawn once, by the first lane to ask for it, and dropped when every lane still
    running has taken it. A lane may lead the slowest by at most ``lead`` steps (it waits beyond),
    which bounds the batches held. Lanes thus only meet at evaluations, not at every step: per
    step, each lane's time varies by a few percent, and a barrier per step would pay the maximum.
    """

    def __init__(self, batches: Iterator[torch.Tensor], device: torch.device, n_lanes: int,
                 on_draw: Callable[[], None], lead: int = 8):
        self.batches, self.device, self.on_draw, self.lead = batches, device, on_draw, lead
        self.cond = threading.Condition()
        self.held: dict[int, torch.Tensor] = {}
        self.drawn = 0  # batches drawn so far (step numbers start at 1)
        self.at = [0] * n_lanes  # the last step each lane took a batch for; None once a lane left
        self.abort = False  # set on Ctrl-C or a failing lane: every lane leaves at its next step

    def get(self, lane: int, step: int) -> torch.Tensor | None:
        """Batch ``step`` for ``lane`` (steps in order), or None when training is being aborted."""
        with self.cond:
            while not self.abort and step > min(a for a in self.at if a is not None) + self.lead:
                self.cond.wait()
            if self.abort:
                return None
            while self.drawn < step:
                self.drawn += 1
                self.held[self.drawn] = next(self.batches).to(self.device, non_blocking=True)
                self.on_draw()
            y_BN = self.held[step]
            self.at[lane] = step
            self._release()
            return y_BN

    def leave(self, lane: int) -> None:
        """``lane`` takes no more batches (its groups all stopped, the segment ended or it failed)."""
        with self.cond:
            self.at[lane] = None
            self._release()

    def join(self, lane: int, step: int) -> None:
        """``lane`` takes batches again from ``step`` on."""
        with self.cond:
            self.at[lane] = step - 1

    def _release(self) -> None:
        active = [a for a in self.at if a is not None]
        low = min(active) if active else self.drawn
        for s in [s for s in self.held if s <= low]:
            del self.held[s]
        self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.abort = True
            self.cond.notify_all()
