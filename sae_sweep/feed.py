"""How concurrent lanes (threads) share a pack's work: one batch stream every group reads in order
(:class:`BatchFeed`), and a queue that hands a free lane the group furthest behind (:class:`StepQueue`).

Imports no hydra, optuna or wandb.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import torch


def stack_streams(streams: Sequence[Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
    """One (S, B, N) batch per step from S streams of (B, N) batches (each stream drawn in its own order)."""
    while True:
        yield torch.stack([next(s) for s in streams])


class BatchFeed:
    """The shared batch stream, read step by step by readers (a pack's groups) that run ahead of each other.

    Batch s is drawn once, by the first reader to ask for it, and dropped when every reader still
    running has taken it. A reader may lead the slowest by at most ``lead`` steps (it waits beyond),
    which bounds the batches held. Readers thus only meet at evaluations, not at every step: per
    step, each one's time varies by a few percent, and a barrier per step would pay the maximum.
    """

    def __init__(self, batches: Iterator[torch.Tensor], device: torch.device, n_readers: int,
                 on_draw: Callable[[], None], lead: int = 8, drawn: int = 0):
        self.batches, self.device, self.on_draw, self.lead = batches, device, on_draw, lead
        self.cond = threading.Condition()
        self.held: dict[int, torch.Tensor] = {}
        self.drawn = drawn  # batches drawn so far (step numbers start at 1; a resumed run's stream starts later)
        self.at = [drawn] * n_readers  # the last step each reader took a batch for; None once it left
        self.abort = False  # set on Ctrl-C or a failing lane: every reader gets None at its next step

    def get(self, reader: int, step: int) -> torch.Tensor | None:
        """Batch ``step`` for ``reader`` (steps in order), or None when training is being aborted."""
        with self.cond:
            while not self.abort and step > min(a for a in self.at if a is not None) + self.lead:
                self.cond.wait()
            if self.abort:
                return None
            while self.drawn < step:
                try:
                    y = next(self.batches)
                except BaseException:  # e.g. Ctrl-C while drawing: every other reader stops too, under the lock
                    self.abort = True
                    self.cond.notify_all()
                    raise
                self.drawn += 1
                self.held[self.drawn] = y.to(self.device, non_blocking=True)
                self.on_draw()
            y_BN = self.held[step]
            self.at[reader] = step
            self._release()
            return y_BN

    def leave(self, reader: int) -> None:
        """``reader`` takes no more batches (it stopped, or its segment ended)."""
        with self.cond:
            self.at[reader] = None
            self._release()

    def join(self, reader: int, step: int) -> None:
        """``reader`` takes batches again from ``step`` on."""
        with self.cond:
            self.at[reader] = step - 1

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


class StepQueue:
    """Which group a free lane steps next: the one furthest behind (ties: the costlier first).

    A group is held by one lane at a time, for one step, so its steps stay in order whichever lane
    takes them. Lanes thus share the pack's work as they go instead of each owning a fixed set of
    groups: a group's cost changes as its codes get sparser (members of a larger alpha drop to the
    sparse step sooner), so any fixed split leaves one lane idle while the other finishes.
    """

    def __init__(self, costs: Sequence[float]):
        self.costs = list(costs)
        self.cond = threading.Condition()
        self.next = [1] * len(self.costs)  # the next step of each group
        self.busy = [False] * len(self.costs)
        self.live = [True] * len(self.costs)  # False once a group is retired (all its members stopped)
        self.last = 0  # the segment's last step: groups are handed out up to it
        self.abort = False

    def open(self, first: int, last: int) -> list[int]:
        """A segment: every live group takes steps first..last. Returns the live groups."""
        with self.cond:
            self.next = [first] * len(self.costs)
            self.last = last
            return [g for g, live in enumerate(self.live) if live]

    def take(self) -> tuple[int, int] | None:
        """(group, step) for a free lane; waits while every unfinished group is held by another lane.
        None once the segment is done or training is being aborted."""
        with self.cond:
            while not self.abort:
                ready = [g for g, live in enumerate(self.live) if live and self.next[g] <= self.last]
                if not ready:
                    return None
                free = [g for g in ready if not self.busy[g]]
                if free:
                    g = min(free, key=lambda g: (self.next[g], -self.costs[g], g))
                    self.busy[g] = True
                    return g, self.next[g]
                self.cond.wait()
            return None

    def done(self, g: int) -> bool:
        """Group g finished its step; True when it has no more steps in this segment (or was retired)."""
        with self.cond:
            self.busy[g] = False
            self.next[g] += 1
            self.cond.notify_all()
            return not self.live[g] or self.next[g] > self.last

    def retire(self, g: int) -> None:
        """Group g takes no more steps (its members all stopped)."""
        with self.cond:
            self.live[g] = False
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.abort = True
            self.cond.notify_all()
