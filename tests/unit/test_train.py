"""The trainer: recovers a planted dictionary, isolates divergence, obeys should_stop."""

from __future__ import annotations

import itertools
import math
import threading
import time

import pytest
import torch

from sae_sweep import train as train_module
from sae_sweep.config import ToyDataConfig, TrainConfig
from sae_sweep.data.toy import ToyFeatures
from sae_sweep.feed import BatchFeed, StepQueue
from sae_sweep.sae import SAE
from sae_sweep.step import SPARSE_BELOW_ONE_THREAD, SPARSE_BELOW_THREADS, auto_sparse_below
from sae_sweep.train import COMPLETED, DIVERGED, INTERRUPTED, PRUNED, EvalSet, evaluate, train


class ListSink:
    def __init__(self):
        self.rows, self.summary = [], None

    def log(self, metrics, step):
        self.rows.append((step, metrics))

    def finish(self, summary):
        self.summary = summary


def _setup(k: int = 1, j: int = 64, **train_kw):
    data = ToyFeatures(ToyDataConfig(n=16, h=32, mean_active=3.0, eval_size=2048, correlation=0.3))
    sae = SAE(16, j, k=k, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(**{"batch_size": 128, "num_samples": 200_000, "eval_every": 50_000, "progress": False,
                         **train_kw})
    eval_set = EvalSet(data.eval_set(), data.ground_truth.features_HN)
    return data, sae, cfg, eval_set


def test_train__recovers_a_planted_dictionary():
    data, sae, cfg, eval_set = _setup(num_samples=400_000)
    before = evaluate(sae, [1.0], eval_set)[0]
    sink = ListSink()
    [out] = train(sae, [1.0], data.batches(128, 0), cfg, eval_set, [[sink]])
    assert out.status == COMPLETED and out.samples == (400_000 // 128) * 128
    assert before["mmcs"] < 0.6
    assert out.final["mmcs"] > 0.95, out.final
    assert out.final["loss"] < before["loss"]
    assert [s for s, _ in sink.rows] == [r["samples"] for _, r in sink.rows]
    assert len(sink.rows) == math.ceil((400_000 // 128) / math.ceil(50_000 / 128))
    assert torch.allclose(sae.W_dec_KJN.norm(dim=-1), torch.ones(1, 64), atol=1e-5)


def test_train__a_diverging_member_is_marked_and_the_other_trains_as_if_alone():
    data, sae, cfg, eval_set = _setup(k=2, num_samples=20_000, eval_every=10_000)
    solo = sae.member(0)
    with torch.no_grad():
        sae.W_enc_KNJ[1, 0, 0] = float("nan")  # member 1's loss is NaN from the first step
    sinks = [[ListSink()], [ListSink()]]
    out = train(sae, [0.3, 0.3], data.batches(128, 0), cfg, eval_set, sinks)
    assert out[0].status == COMPLETED and math.isfinite(out[0].final["loss"])
    assert out[1].status == DIVERGED and "loss became nan" in out[1].message
    assert sinks[1][0].rows == [] and len(sinks[0][0].rows) == 2
    [alone] = train(solo, [0.3], data.batches(128, 0), cfg, eval_set, [[]])
    assert torch.allclose(solo.W_dec_KJN[0], sae.W_dec_KJN[0], atol=1e-5)
    assert alone.final["loss"] == pytest.approx(out[0].final["loss"], rel=1e-4)


def test_train__should_stop_prunes_a_member():
    data, sae, cfg, eval_set = _setup(num_samples=40_000, eval_every=10_000)
    calls = []

    def stop(member, samples, row):
        calls.append(samples)
        return samples >= 20_000

    [out] = train(sae, [0.3], data.batches(128, 0), cfg, eval_set, [[]], should_stop=stop)
    assert out.status == PRUNED and out.samples < 40_000 and len(calls) == 2


def test_evaluate__reports_dead_latents_and_recovery_metrics():
    data, sae, cfg, eval_set = _setup()
    with torch.no_grad():
        sae.b_enc_KJ[0, :5] = -1e6  # planted: five latents can never fire
    row = evaluate(sae, [0.1], eval_set)[0]
    assert row["dead"] >= 5 and row["alive"] == 64 - row["dead"]
    assert {"mmcs", "mmcs_learned", "recovered_90", "recovered_99", "fvu", "l0", "l1", "mse", "loss"} <= row.keys()


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
    data, _, cfg, eval_set = _setup(num_samples=128 * 400, eval_every=128 * 100, lanes=lanes)

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
    data, _, cfg, eval_set = _setup(num_samples=128 * 200, eval_every=128 * 100, lanes=2)
    saes = [SAE(16, j, k=1, generator=torch.Generator().manual_seed(j)) for j in (16, 24, 32, 40)]
    out = train(saes, [0.3] * 4, data.batches(128, 0), cfg, eval_set, [[]] * 4)
    assert [o.status for o in out] == [COMPLETED] * 4
    first_entries = [float(y[0, 0]) for y in itertools.islice(data.batches(128, 0), 200)]
    for j in (16, 24, 32, 40):
        assert [y for dj, _, y in taken if dj == j] == first_entries  # the same batches, in order
    lanes_of = {j: {name for dj, name, _ in taken if dj == j and name.startswith("sae-lane")} for j in (16, 24, 32, 40)}
    assert sum(len(names) for names in lanes_of.values()) > 4  # some group was stepped by both lanes


def test_train__a_group_whose_members_all_stopped_is_frozen_while_the_others_train():
    data, _, cfg, eval_set = _setup(num_samples=40_000, eval_every=10_000, lanes=2)
    pruned, going = SAE(16, 32, k=2, generator=torch.Generator().manual_seed(1)), SAE(16, 64, k=1)
    before = going.W_dec_KJN.detach().clone()

    def stop(member, samples, row):
        return member < 2 and samples >= 20_000  # members 0 and 1 are the 32-latent group

    out = train([pruned, going], [0.3, 1.0, 0.3], data.batches(128, 0), cfg, eval_set, [[], [], []], should_stop=stop)
    assert [o.status for o in out] == [PRUNED, PRUNED, COMPLETED]
    for k in range(2):  # nothing moved after the stop: the kept weights are the group's final ones
        torch.testing.assert_close(out[k].weights.W_dec_KJN[0], pruned.W_dec_KJN[k])
    assert not torch.allclose(going.W_dec_KJN, before)


def test_auto_sparse_below__one_thread_crossover_is_higher_and_cuda_stays_dense():
    assert auto_sparse_below(torch.device("cpu"), 1) == SPARSE_BELOW_ONE_THREAD
    assert auto_sparse_below(torch.device("cpu"), 2) == SPARSE_BELOW_THREADS < SPARSE_BELOW_ONE_THREAD
    assert auto_sparse_below(torch.device("cuda"), 1) == 0.0


@pytest.mark.parametrize("lanes, threads, configured, expected", [
    (2, 2, None, SPARSE_BELOW_ONE_THREAD),  # two lanes: each steps on one torch thread
    (1, 2, None, SPARSE_BELOW_THREADS),  # one lane with both threads
    (1, 1, None, SPARSE_BELOW_ONE_THREAD),
    (2, 2, 0.3, 0.3),  # a configured value is used as it is
])
def test_train__passes_the_step_the_sparse_threshold_of_how_it_runs(monkeypatch, lanes, threads, configured, expected):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["sparse_below"])
        return loss_and_grads(*args, **kwargs)

    loss_and_grads = train_module.loss_and_grads
    monkeypatch.setattr(train_module, "loss_and_grads", spy)
    data, _, cfg, eval_set = _setup(num_samples=2_560, eval_every=2_560, lanes=lanes, sparse_below=configured)
    saes = [SAE(16, 32, k=1), SAE(16, 64, k=1)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = train(saes, [0.3, 0.3], data.batches(128, 0), cfg, eval_set, [[], []])
    finally:
        torch.set_num_threads(before)
    assert [o.status for o in out] == [COMPLETED, COMPLETED]
    assert seen and set(seen) == {expected}


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


def test_train__a_stopped_member_is_skipped_while_its_group_trains_on(monkeypatch):
    skips = []

    def spy(*args, **kwargs):
        skips.append(set(kwargs["skip"]))
        return loss_and_grads(*args, **kwargs)

    loss_and_grads = train_module.loss_and_grads
    monkeypatch.setattr(train_module, "loss_and_grads", spy)
    data, sae, cfg, eval_set = _setup(k=2, num_samples=40_960, eval_every=20_480)
    solo = sae.member(1)
    out = train(sae, [0.3, 0.3], data.batches(128, 0), cfg, eval_set, [[], []],
                should_stop=lambda member, samples, row: member == 0)
    assert [o.status for o in out] == [PRUNED, COMPLETED]
    steps = 40_960 // 128
    assert skips == [set()] * (steps // 2) + [{0}] * (steps // 2)  # member 0 stops at the first evaluation
    [alone] = train(solo, [0.3], data.batches(128, 0), cfg, eval_set, [[]])
    assert out[1].final["loss"] == pytest.approx(alone.final["loss"], rel=1e-5)
