"""The batch feed and the lanes (sae_sweep/lanes.py, as train.py runs them): every lane
sees the same batches in order, a free lane takes the group furthest behind, Ctrl-C and stops end every lane.
"""

from __future__ import annotations

import itertools
import math
import threading
import time

import pytest
import torch

from sae_sweep import train as train_module
from sae_sweep.lanes import BatchFeed, StepQueue
from sae_sweep.sae import SAE
from sae_sweep.train import COMPLETED, INTERRUPTED, PRUNED, train
from tests.helpers.build import train_setup


def test_step_queue__hands_a_free_lane_the_group_furthest_behind_costlier_first():
    queue = StepQueue([1.0, 4.0, 2.0])
    assert queue.open(1, 3) == [0, 1, 2]
    assert queue.take() == (1, 1)  # all at step 1: the costliest first
    assert queue.take() == (2, 1)  # group 1 is held by a lane: never handed out twice
    assert queue.done(1) is False
    assert queue.take() == (0, 1)  # group 0 is now the furthest behind (step 1 against 2)
    assert queue.take() == (1, 2)
    for g in (0, 2):
        queue.done(g)
    assert queue.take() == (2, 2)  # 0 and 2 at step 2, 1 held: the costlier of the free ones
    queue.retire(0)
    assert queue.done(1) is False and queue.done(2) is False
    assert queue.take() == (1, 3) and queue.take() == (2, 3)  # group 0 retired: never handed out again
    assert queue.done(1) is True and queue.done(2) is True  # step 3 was the segment's last
    assert queue.take() is None
    assert queue.open(4, 4) == [1, 2]


def test_step_queue__a_lane_waits_while_every_unfinished_group_is_held_then_takes_it():
    queue = StepQueue([1.0])
    queue.open(1, 2)
    assert queue.take() == (0, 1)
    got = []
    waiter = threading.Thread(target=lambda: got.append(queue.take()))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive() and got == []  # the only group is held by the first lane
    queue.done(0)
    waiter.join(timeout=10)
    assert got == [(0, 2)]
    queue.stop()
    assert queue.take() is None


@pytest.mark.parametrize("lanes", [1, 2])
def test_train__ctrl_c_marks_the_running_members_interrupted_and_ends_every_lane(lanes):
    data, _, cfg, eval_set = train_setup(num_samples=128 * 400, eval_every=128 * 100, lanes=lanes)

    def batches():  # Ctrl-C arrives while batch 151 is being drawn (in whichever lane asks for it)
        for i, y_BN in enumerate(data.batches(128, 0)):
            if i == 150:
                raise KeyboardInterrupt
            yield y_BN

    saes = [SAE(16, 32, k=2), SAE(16, 64, k=1)]
    out = train(saes, [0.3] * 3, batches(), cfg, eval_set, [[]] * 3)
    assert [o.status for o in out] == [INTERRUPTED] * 3
    assert [o.samples for o in out] == [100 * 128] * 3  # the last evaluation before Ctrl-C is kept
    assert all(math.isfinite(o.final["loss"]) for o in out)


def test_train__lanes_share_the_groups_step_by_step(monkeypatch):
    """Any lane steps any group (no fixed split): every group's steps, in order, whichever lane takes them."""
    taken = []

    def spy(sae, y_BN, *args, **kwargs):
        taken.append((sae.dict_size, threading.current_thread().name, float(y_BN[0, 0])))
        return loss_and_grads(sae, y_BN, *args, **kwargs)

    loss_and_grads = train_module.loss_and_grads
    monkeypatch.setattr(train_module, "loss_and_grads", spy)
    data, _, cfg, eval_set = train_setup(num_samples=128 * 200, eval_every=128 * 100, lanes=2)
    saes = [SAE(16, j, k=1, generator=torch.Generator().manual_seed(j)) for j in (16, 24, 32, 40)]
    out = train(saes, [0.3] * 4, data.batches(128, 0), cfg, eval_set, [[]] * 4)
    assert [o.status for o in out] == [COMPLETED] * 4
    first_entries = [float(y[0, 0]) for y in itertools.islice(data.batches(128, 0), 200)]
    for j in (16, 24, 32, 40):
        assert [y for dj, _, y in taken if dj == j] == first_entries  # the same batches, in order
    lanes_of = {j: {name for dj, name, _ in taken if dj == j and name.startswith("sae-lane")} for j in (16, 24, 32, 40)}
    assert sum(len(names) for names in lanes_of.values()) > 4  # some group was stepped by both lanes


def test_train__a_group_whose_members_all_stopped_is_frozen_while_the_others_train():
    data, _, cfg, eval_set = train_setup(num_samples=40_000, eval_every=10_000, lanes=2)
    pruned, going = SAE(16, 32, k=2, generator=torch.Generator().manual_seed(1)), SAE(16, 64, k=1)
    before = going.W_dec_KJN.detach().clone()

    def stop(member, samples, row):
        return member < 2 and samples >= 20_000  # members 0 and 1 are the 32-latent group

    out = train([pruned, going], [0.3, 1.0, 0.3], data.batches(128, 0), cfg, eval_set, [[], [], []], should_stop=stop)
    assert [o.status for o in out] == [PRUNED, PRUNED, COMPLETED]
    for k in range(2):  # nothing moved after the stop: the kept weights are the group's final ones
        torch.testing.assert_close(out[k].weights.W_dec_KJN[0], pruned.W_dec_KJN[k])
    assert not torch.allclose(going.W_dec_KJN, before)


def test_feed__lanes_get_the_same_batches_in_order_each_drawn_once_and_the_lead_is_bounded():
    drawn = []

    def batches():
        i = 0
        while True:
            i += 1
            drawn.append(i)
            yield torch.full((1, 1), float(i))

    lead, steps = 3, 40
    feed = BatchFeed(batches(), torch.device("cpu"), 2, on_draw=lambda: None, lead=lead)
    got, held = {0: [], 1: []}, []

    def lane(i: int, pause: float) -> None:
        for step in range(1, steps + 1):
            got[i].append(int(feed.get(i, step).item()))
            held.append(len(feed.held))
            time.sleep(pause)  # lane 1 is the slow one: lane 0 runs ahead until the lead stops it
        feed.leave(i)

    threads = [threading.Thread(target=lane, args=(0, 0.0)), threading.Thread(target=lane, args=(1, 0.002))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] == got[1] == list(range(1, steps + 1))
    assert drawn == list(range(1, steps + 1))  # each batch drawn once, shared by both lanes
    assert max(held) == lead  # the fast lane ran lead steps ahead of the slow one (held: the steps between), no further
    assert feed.held == {}  # everything released once both lanes left


def test_feed__stop_releases_a_waiting_lane():
    feed = BatchFeed(iter(torch.zeros(100, 1, 1)), torch.device("cpu"), 2, on_draw=lambda: None, lead=1)
    assert feed.get(0, 1) is not None  # lane 1 is still at step 0
    result = []
    waiter = threading.Thread(target=lambda: result.append(feed.get(0, 2)))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()  # step 2 would lead lane 1 by 2 > 1
    feed.stop()
    waiter.join(timeout=10)
    assert result == [None]
