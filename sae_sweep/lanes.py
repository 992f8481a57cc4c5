"""Lanes: concurrent threads that step a pack's groups, segment by segment, on one shared batch stream.

:class:`Lanes` runs them (one torch thread each, threads.py); every group reads one batch stream in
order (:class:`BatchFeed`), and a queue hands a free lane the group furthest behind (:class:`StepQueue`).
Groups are numbers with a cost here: what a step does is the caller's (train.py). Imports no hydra,
optuna or wandb, and nothing of SAEs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from sae_sweep.threads import torch_threads

# step(g, step, y): group g's step number ``step`` on its batch y (B, N) or (S, B, N).
StepFn = Callable[[int, int, torch.Tensor], None]


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


class Lanes:
    """``n_lanes`` lanes that step groups of the given costs: threads of a pool, or the caller's thread alone.

    Small steps use a core far better one per core than split over cores, so inside ``with lanes:``
    torch runs one thread per lane when there are several (the count before is restored after). A free
    lane takes the group furthest behind (:class:`StepQueue`), one step at a time, so lanes share the
    work however the groups' costs drift; every group reads the same batches from one feed
    (:class:`BatchFeed`, ``drawn`` batches of it already used: a resumed run); lanes meet only between
    segments, where :meth:`run` spreads other work (e.g. evaluations) over them too.
    """

    def __init__(self, n_lanes: int, costs: Sequence[float], batches: Iterator[torch.Tensor], device: torch.device,
                 on_draw: Callable[[], None], drawn: int = 0):
        self.n_lanes = n_lanes
        self.queue = StepQueue(costs)
        self.feed = BatchFeed(batches, device, len(costs), on_draw=on_draw, drawn=drawn)
        self.pool = ThreadPoolExecutor(n_lanes, thread_name_prefix="sae-lane") if n_lanes > 1 else None
        self._threads = torch_threads(1 if self.pool is not None else None)  # one core per lane

    def __enter__(self) -> Lanes:
        self._threads.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.stop()
            self.pool.shutdown()
        self._threads.__exit__(None, None, None)

    def run(self, fns: Sequence[Callable[[], Any]]) -> list[Any]:
        """Every fn(), spread over the lanes when there are several."""
        if self.pool is None:
            return [fn() for fn in fns]
        return [f.result() for f in [self.pool.submit(fn) for fn in fns]]

    def segment(self, first: int, last: int, step: StepFn, concurrent: bool = True) -> None:
        """Steps first..last of every live group: in every lane, or (``concurrent=False``) one lane in this thread."""
        live = set(self.queue.open(first, last))
        for g in range(len(self.queue.costs)):
            if g in live:
                self.feed.join(g, first)
            else:  # retired: it never reads, so must not hold the others back
                self.feed.leave(g)
        lane = functools.partial(self._lane, step)
        if concurrent:
            self.run([lane] * self.n_lanes)
        else:
            lane()

    def _lane(self, step: StepFn) -> None:
        """One lane: step whichever group the queue hands out until the segment is done or aborted."""
        try:
            while (job := self.queue.take()) is not None:
                g, s = job
                y = self.feed.get(g, s)
                if y is None:  # aborted
                    self.queue.done(g)
                    return
                step(g, s, y)
                if self.queue.done(g):
                    self.feed.leave(g)
        except BaseException:
            self.stop()
            raise

    def retire(self, g: int) -> None:
        """Group g takes no more steps."""
        self.queue.retire(g)

    def stop(self) -> None:
        """Abort: every lane ends at its next step (Ctrl-C, or a lane that failed)."""
        self.feed.stop()
        self.queue.stop()
