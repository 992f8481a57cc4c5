"""The trainer: recovers a planted dictionary, isolates divergence, obeys should_stop, picks the sparse
threshold of how it runs.
"""

from __future__ import annotations

import math

import pytest
import torch

from sae_sweep import train as train_module
from sae_sweep.sae import SAE
from sae_sweep.step import SPARSE_BELOW_ONE_THREAD, SPARSE_BELOW_THREADS, auto_sparse_below
from sae_sweep.train import COMPLETED, DIVERGED, PRUNED, evaluate, train
from tests.helpers.build import train_setup


class ListSink:
    def __init__(self):
        self.rows, self.summary = [], None

    def log(self, metrics, step):
        self.rows.append((step, metrics))

    def finish(self, summary):
        self.summary = summary


def test_train__recovers_a_planted_dictionary():
    data, sae, cfg, eval_set = train_setup(num_samples=400_000)
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
    data, sae, cfg, eval_set = train_setup(k=2, num_samples=20_000, eval_every=10_000)
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
    data, sae, cfg, eval_set = train_setup(num_samples=40_000, eval_every=10_000)
    calls = []

    def stop(member, samples, row):
        calls.append(samples)
        return samples >= 20_000

    [out] = train(sae, [0.3], data.batches(128, 0), cfg, eval_set, [[]], should_stop=stop)
    assert out.status == PRUNED and out.samples < 40_000 and len(calls) == 2


def test_evaluate__reports_dead_latents_and_recovery_metrics():
    data, sae, cfg, eval_set = train_setup()
    with torch.no_grad():
        sae.b_enc_KJ[0, :5] = -1e6  # planted: five latents can never fire
    row = evaluate(sae, [0.1], eval_set)[0]
    assert row["dead"] >= 5 and row["alive"] == 64 - row["dead"]
    assert {"mmcs", "mmcs_learned", "recovered_90", "recovered_99", "fvu", "l0", "l1", "mse", "loss"} <= row.keys()


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
    data, _, cfg, eval_set = train_setup(num_samples=2_560, eval_every=2_560, lanes=lanes, sparse_below=configured)
    saes = [SAE(16, 32, k=1), SAE(16, 64, k=1)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = train(saes, [0.3, 0.3], data.batches(128, 0), cfg, eval_set, [[], []])
    finally:
        torch.set_num_threads(before)
    assert [o.status for o in out] == [COMPLETED, COMPLETED]
    assert seen and set(seen) == {expected}


def test_train__a_stopped_member_is_skipped_while_its_group_trains_on(monkeypatch):
    skips = []

    def spy(*args, **kwargs):
        skips.append(set(kwargs["skip"]))
        return loss_and_grads(*args, **kwargs)

    loss_and_grads = train_module.loss_and_grads
    monkeypatch.setattr(train_module, "loss_and_grads", spy)
    data, sae, cfg, eval_set = train_setup(k=2, num_samples=40_960, eval_every=20_480)
    solo = sae.member(1)
    out = train(sae, [0.3, 0.3], data.batches(128, 0), cfg, eval_set, [[], []],
                should_stop=lambda member, samples, row: member == 0)
    assert [o.status for o in out] == [PRUNED, COMPLETED]
    steps = 40_960 // 128
    assert skips == [set()] * (steps // 2) + [{0}] * (steps // 2)  # member 0 stops at the first evaluation
    [alone] = train(solo, [0.3], data.batches(128, 0), cfg, eval_set, [[]])
    assert out[1].final["loss"] == pytest.approx(alone.final["loss"], rel=1e-5)
