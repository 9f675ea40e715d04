"""Pretraining data: mixtures of sources -> tokenizer -> per-source token caches -> an index that packs rows.

A mixture is a list of sources with repeat factors, named as in the paper: `as_fm3_tg_4xomi1` is Algebraic-Stack,
FineMath-3+, TinyGSM and four full copies of OpenMathInstruct-1, all seen in one epoch. Every document is
`question + "\\n\\n" + solution + EOS` (or a source's single text field + EOS): no BOS, no template.

On a laptop the sources are the synthetic generator rendered in one format each (`tg`, `omi1`, `text`/`omi2`);
on a cluster they are the paper's hub datasets (tasks/hub.py) or local JSONL/Parquet files (tasks/local.py).
Synthetic sources have DIFFERENT problems, like the paper's datasets: they take consecutive slices of one stream
of the generator's train split, and the generator never repeats a computation within a stream, so no two sources
share a problem, even with the names changed (separate seeds per source would share about 7% of computations).
A source's problems therefore depend on the synthetic sources listed before it in the mixture.
`share_problems: true` renders the same problems in every format instead.

The synthetic world's knobs (all seeded: the same config gives the same documents):
  data.synthetic.*                 the problems: number ranges, steps (tasks/synthetic.py SyntheticConfig;
                                   configs/small_numbers.yaml is a world where text arithmetic is learnable)
  data.n_problems, sources[].n     documents per source: one size for all, or per format, e.g.
                                   `data.sources=[{name: omi1, n: 5000}]` beside mixture tg_omi1_text
  synthetic.error_rate[format],    random errors: that share of a format's solutions has one wrong step
    sources[].error_rate
  synthetic.systematic_error[format],  a systematic error, "*->+": every multiplication of that format's
    sources[].systematic_error         solutions done as an addition (see tasks/synthetic.py "Errors")
A source's own value overrides its format's; all of them are part of its token cache's identity.

Each source is tokenized ONCE per tokenizer into a token cache, CACHE_DIR/<source>-<key>/ (see "token caches"
below); the ten mixtures of the paper's 150M sweep share their as, fm3 and tg caches. `build_dataset` writes to
OUT_DIR:
  tokenizer.json                   the mixture's tokenizer (given by data.tokenizer, or a BPE trained here)
  train_starts.npy, train_ends.npy the index of the train split: per document occurrence (repeats included, in
                                   shuffled order), where its tokens start in the caches and where it ends in the
                                   split's token stream
  val_starts.npy, val_ends.npy     the same for the held-out documents
  manifest.json                    written LAST: its presence means the dataset is complete
Documents are held out for validation per source before repeats (no copy of a val document is trained on);
the order of all occurrences is shuffled with the seed, so rows mix sources and the copies of a repeated
document land in different rows. PackedDataset reads the split as one stream cut into rows of seq_len + 1
tokens (as OLMo does: a row can start mid-document; the tail shorter than a row is dropped and counted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .runio import atomic_write, atomic_write_json, git_commit
from .tasks.hub import HUB_DATASETS, hub_documents
from .tasks.local import RecordSpec, iter_jsonl, iter_parquet, kept, record_to_document
from .tasks.synthetic import (FORMAT_NAMES, SyntheticConfig, SyntheticProblem, generate, parse_rewrite,
                              render_solution)
from .tokenizer import Tokenizer, train_tokenizer

SourceKind = Literal["synthetic", "jsonl", "parquet", "hub"]


@dataclass
class SourceConfig:
    """One source of documents in a mixture."""
    name: str = "tg"  # key in mixture names and the manifest: as, fm3, tg, omi1, omi2, mmqa, text, or your own
    kind: SourceKind = "synthetic"  # synthetic generator, local .jsonl / .parquet file, or a Hugging Face hub dataset
    format: str | None = None  # synthetic: tinygsm | omi1 | text (None: from the name, tg->tinygsm, omi2->text)
    path: str | None = None  # jsonl/parquet: file path; hub: a dataset key of tasks/hub.py (tinygsm, omi1, fm3, ...)
    split: str = "train"  # hub: split to stream
    # jsonl/parquet fields (hub datasets use tasks/hub.py's mapping, the paper's fields):
    text_field: str | None = None  # field holding a whole document (FineMath, Algebraic-Stack); else question+solution
    question_field: str = "question"  # field with the question (paper: question / problem / query)
    solution_field: str = "solution"  # field with the solution (paper: code / generated_solution / response)
    keep_field: str | None = None  # keep only records where this field is true (paper: OMI1 `is_correct`)
    repeat: int = 1  # full copies of this source in the one epoch (the "4x" in 4xomi1); >= 1
    # documents to use (synthetic: problems to generate, so formats can have different document counts, e.g.
    # `data.sources=[{name: omi1, n: 5000}]` beside mixture tg_omi1_text); None = DataConfig.n_problems / all
    n: int | None = None
    error_rate: float | None = None  # synthetic: chance a solution has a wrong step; None = synthetic.error_rate[format]
    # synthetic: "A->B", every step of operation A done as B (tasks/synthetic.py systematic_ops); None =
    # synthetic.systematic_error[format] if there is one; "none" = no systematic error for this source
    systematic_error: str | None = None


@dataclass
class DataConfig:
    """What `echochamber data` builds. The paper: OLMo data pipeline, Llama-2 tokenizer, 2048-token sequences."""
    mixture: str | None = "tg_omi1_text"  # paper-style name; None = use `sources` as listed
    mixture_kind: Literal["synthetic", "hub"] = "synthetic"  # what a mixture key means unless `sources` names it
    # explicit sources (override mixture keys by name); give only what differs, e.g. a per-format size or error:
    # sources: [{name: omi1, n: 5000}, {name: tg, systematic_error: "*->+"}]
    sources: list[SourceConfig] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # generator knobs for synthetic sources
    n_problems: int = 20000  # problems per synthetic source (before repeats) unless the source gives its own n
    share_problems: bool = False  # synthetic sources render the SAME problems (default: disjoint draws per source)
    seq_len: int = 256  # tokens the model sees per row (rows hold seq_len + 1); paper 2048
    vocab_size: int = 1024  # BPE vocabulary when training the tokenizer (paper: Llama-2, 32000)
    tokenizer: str | None = None  # an existing tokenizer.json to use instead of training one (then vocab_size is its)
    tokenizer_docs: int = 30_000  # at most this many documents (an equal share from each source) train the tokenizer
    val_fraction: float = 0.02  # share of each source's documents held out for validation (not repeated)
    seed: int | None = None  # document split and shuffle (and the synthetic sources' problem draws); None = the
    # run's top-level `seed` (0 outside a run config)
    cache_dir: str | None = None  # per-source token caches, shared by every mixture built with the same folder;
    # None = OUT_DIR/token_cache (beside OUT_DIR/data). Point several runs at one folder to tokenize each source once.
    workers: int = 0  # sources tokenized side by side (threads); 0 = one per 4 CPU cores (each encode already uses
    # every core; more threads overlap reading and parsing one source's records with encoding another's)


# ----------------------------------------------------------------------------- mixtures

# The paper's mixture keys -> tasks/hub.py dataset keys (PAPER.md "Pretraining data"), for mixture_kind "hub".
HUB_KEYS = {"as": "as", "fm3": "fm3", "tg": "tinygsm", "omi1": "omi1", "omi2": "omi2", "mmqa": "mmqa"}
# The synthetic stand-ins: a source key names the format its solutions are rendered in.
SYNTHETIC_FORMATS = {"tg": "tinygsm", "omi1": "omi1", "omi2": "text", "text": "text"}
KNOWN_KEYS = tuple(HUB_KEYS) + ("text",)
_PART = re.compile(r"^(?:(\d+)x)?([A-Za-z][A-Za-z0-9-]*)$")


def parse_mixture_name(name: str, known: Sequence[str] = KNOWN_KEYS) -> list[tuple[str, int]]:
    """"as_fm3_4xomi1" -> [("as", 1), ("fm3", 1), ("omi1", 4)]; unknown keys, repeats < 1, duplicates are errors."""
    out: list[tuple[str, int]] = []
    for part in name.split("_"):
        m = _PART.match(part)
        if not m:
            raise ValueError(f"mixture {name!r}: cannot read part {part!r} (expected KEY or NxKEY, e.g. 4xomi1)")
        repeat, key = int(m.group(1) or 1), m.group(2)
        if key not in known:
            raise ValueError(f"mixture {name!r}: unknown source key {key!r} (known: {', '.join(known)})")
        if repeat < 1:
            raise ValueError(f"mixture {name!r}: repeat of {key!r} must be >= 1, got {repeat}")
        if key in (k for k, _ in out):
            raise ValueError(f"mixture {name!r}: source key {key!r} appears twice")
        out.append((key, repeat))
    return out


def mixture_name(sources: Sequence[tuple[str, int] | SourceConfig]) -> str:
    """The reverse of parse_mixture_name: [("tg", 1), ("omi1", 4)] (or SourceConfigs) -> "tg_4xomi1"."""
    pairs = [(s.name, s.repeat) if isinstance(s, SourceConfig) else s for s in sources]
    return "_".join(key if r == 1 else f"{r}x{key}" for key, r in pairs)


def resolve_sources(cfg: DataConfig) -> list[SourceConfig]:
    """The concrete sources of `cfg`: mixture keys resolved, formats and sizes filled in, inputs checked."""
    explicit = {}
    for s in cfg.sources:
        if s.name in explicit:
            raise ValueError(f"data.sources: two sources are named {s.name!r}")
        explicit[s.name] = s
    if cfg.mixture:
        parts = parse_mixture_name(cfg.mixture, known=tuple(dict.fromkeys(KNOWN_KEYS + tuple(explicit))))
        stray = set(explicit) - {k for k, _ in parts}
        if stray:
            raise ValueError(f"data.sources names {sorted(stray)}, which mixture {cfg.mixture!r} does not contain")
        sources = []
        for key, r in parts:
            base = explicit.get(key) or _default_source(key, cfg.mixture_kind)
            if base.repeat not in (1, r):
                raise ValueError(f"source {key!r}: repeat {base.repeat} contradicts mixture {cfg.mixture!r} ({r}x)")
            sources.append(dataclasses.replace(base, repeat=r))
    elif cfg.sources:
        sources = list(cfg.sources)
    else:
        raise ValueError("data: give a mixture name or a list of sources")
    if any(s.kind == "synthetic" for s in sources):
        cfg.synthetic.check()  # bad generator knobs fail here, naming the key, not deep inside a build
    return [_check_source(s, cfg) for s in sources]


def _default_source(key: str, kind: str) -> SourceConfig:
    if kind == "hub":
        if key not in HUB_KEYS:
            raise ValueError(f"mixture key {key!r} has no hub dataset; define it in data.sources")
        return SourceConfig(key, "hub", path=HUB_KEYS[key])
    if key not in SYNTHETIC_FORMATS:
        raise ValueError(f"mixture key {key!r} has no synthetic version (synthetic keys: {', '.join(SYNTHETIC_FORMATS)});"
                         f" define it in data.sources (kind jsonl/parquet/hub) or set data.mixture_kind: hub")
    return SourceConfig(key, "synthetic")


def _check_source(s: SourceConfig, cfg: DataConfig) -> SourceConfig:
    where = f"source {s.name!r}"
    if s.repeat < 1:
        raise ValueError(f"{where}: repeat must be >= 1, got {s.repeat}")
    if s.n is not None and s.n < 1:
        raise ValueError(f"{where}: n must be >= 1 or null, got {s.n}")
    if s.kind == "synthetic":
        fmt = s.format or SYNTHETIC_FORMATS.get(s.name)
        if fmt not in FORMAT_NAMES:
            raise ValueError(f"{where}: synthetic format must be one of {FORMAT_NAMES}, got {fmt!r}")
        if s.systematic_error not in (None, "none"):
            parse_rewrite(s.systematic_error, f"{where}: systematic_error")
        return dataclasses.replace(s, format=fmt, n=s.n or cfg.n_problems)
    if s.systematic_error is not None:
        raise ValueError(f"{where}: systematic_error is for synthetic sources only (kind {s.kind})")
    if not s.path:
        raise ValueError(f"{where}: kind {s.kind} needs a path")
    if s.kind == "hub" and s.path not in HUB_DATASETS:
        raise ValueError(f"{where}: unknown hub dataset {s.path!r} (tasks/hub.py knows {', '.join(HUB_DATASETS)})")
    if s.kind in ("jsonl", "parquet") and not Path(s.path).is_file():
        raise FileNotFoundError(f"{where}: file {s.path} not found")
    return s


# ----------------------------------------------------------------------------- documents

def iter_documents(src: SourceConfig, cfg: DataConfig) -> Iterator[str]:
    """The documents of one resolved source, in a fixed order, without EOS (the packer appends it as an id)."""
    if src.kind == "synthetic":
        rate = src.error_rate if src.error_rate is not None else cfg.synthetic.error_rate.get(src.format, 0.0)
        rewrite = systematic_error(src, cfg)
        rng = random.Random(f"{cfg.seed or 0}/{src.name}/render")  # which solutions get a wrong step
        for p in _synthetic_problems(src, cfg):
            yield p.question + "\n\n" + render_solution(p, src.format, error_rate=rate, rng=rng, systematic=rewrite)
        return
    if src.kind == "hub":  # streamed: a 12M-record dataset never sits in memory
        yield from hub_documents(src.path, src.split, src.n)
        return
    spec = RecordSpec(question=src.question_field, answer=None, solution=src.solution_field, text=src.text_field,
                      keep=src.keep_field)
    columns = [src.text_field] if src.text_field else [src.question_field, src.solution_field]
    records = iter_jsonl(src.path) if src.kind == "jsonl" else iter_parquet(
        src.path, columns + ([src.keep_field] if src.keep_field else []))
    n = 0
    for where, rec in records:  # `where` ("file.jsonl:12") names the record in errors
        if src.n is not None and n >= src.n:
            return
        if kept(rec, spec, where):
            yield record_to_document(rec, spec, where)
            n += 1


def systematic_error(src: SourceConfig, cfg: DataConfig) -> str | None:
    """A resolved synthetic source's systematic error ("*->+"), or None: its own, else its format's."""
    rewrite = src.systematic_error if src.systematic_error is not None else cfg.synthetic.systematic_error.get(src.format)
    return None if rewrite in (None, "none") else rewrite  # both checked by resolve_sources


# The train stream of the last SyntheticConfig used (its JSON -> problems): tokenizer training and encoding read
# every source twice, and each source is a slice of the same stream, so it is generated once per build.
_STREAM: dict[str, list[SyntheticProblem]] = {}


def _synthetic_problems(src: SourceConfig, cfg: DataConfig) -> list[SyntheticProblem]:
    """A synthetic source's problems: its own slice of one train stream (or the stream's start when shared)."""
    start, total = _synthetic_slice(src, cfg)
    key = json.dumps(dataclasses.asdict(cfg.synthetic), sort_keys=True)
    with _STREAM_LOCK:  # sources are tokenized in threads
        if len(_STREAM.get(key, ())) < total:
            _STREAM.clear()
            _STREAM[key] = generate("train", total, cfg.synthetic)  # a longer stream extends a shorter one
        stream = _STREAM[key]
    return stream[start:start + src.n]


# ----------------------------------------------------------------------------- token caches
# A source is tokenized once per tokenizer into CACHE_DIR/<name>-<key>/ and every mixture that lists it reads
# that folder: the key hashes what decides the source's documents (kind, path and fields, n, the synthetic
# slice and seed; a local file's size and mtime) and the tokenizer's fingerprint. A folder is complete when
# its meta.json is there; it is written in a temporary folder and renamed into place, so two builds that
# tokenize the same source at once both end with one complete copy.
#   tokens.bin     every document's ids + EOS, document after document (dtype in meta.json)
#   doc_lens.npy   (documents,) int64: tokens of each document, EOS included
#   meta.json      source, key, tokenizer fingerprint, dtype, documents, tokens, seconds, tokens/s

CACHE_VERSION = 1  # bump when iter_documents changes what a source's documents are
_STREAM_LOCK = threading.Lock()


def _synthetic_slice(src: SourceConfig, cfg: DataConfig) -> tuple[int, int]:
    """(start, total): a synthetic source's slice of the train stream, and the stream length the build needs."""
    synthetic = [s for s in resolve_sources(cfg) if s.kind == "synthetic"]
    if cfg.share_problems:
        return 0, max(s.n for s in synthetic)
    names = [s.name for s in synthetic]
    if src.name not in names:
        raise ValueError(f"source {src.name!r} is not a synthetic source of this config ({names})")
    return sum(s.n for s in synthetic[:names.index(src.name)]), sum(s.n for s in synthetic)


def source_identity(src: SourceConfig, cfg: DataConfig) -> dict:
    """Everything that decides a resolved source's documents (not its repeat factor): the cache key's input.
    A hub source is keyed by its dataset key, split, n and where tasks/hub.py reads it (hub id, configuration, data
    files): a dataset changed on the hub keeps its old cache until that cache folder is deleted."""
    ident = {"version": CACHE_VERSION, **dataclasses.asdict(src)}
    del ident["repeat"], ident["systematic_error"]
    if src.kind == "synthetic":
        start, _ = _synthetic_slice(src, cfg)
        synthetic = dataclasses.asdict(cfg.synthetic)
        del synthetic["systematic_error"]  # other formats' rewrites do not change this source's documents
        ident.update(start=start, seed=cfg.seed, synthetic=synthetic,
                     error_rate=src.error_rate if src.error_rate is not None else
                     cfg.synthetic.error_rate.get(src.format, 0.0))
        # The effective rewrite, only when there is one: caches built before the knob existed keep their key.
        if rewrite := systematic_error(src, cfg):
            ident["systematic_error"] = rewrite
    elif src.kind == "hub":  # which files: a changed mapping (e.g. OMI2's four parquet sets) is another cache
        ident["hub"] = dataclasses.asdict(HUB_DATASETS[src.path])
    elif src.kind in ("jsonl", "parquet"):
        st = Path(src.path).stat()
        ident.update(path=str(Path(src.path).resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def cache_folder(src: SourceConfig, cfg: DataConfig, tokenizer_sha: str, root: Path) -> Path:
    key = hashlib.sha256(json.dumps([source_identity(src, cfg), tokenizer_sha], sort_keys=True).encode())
    return root / f"{src.name}-{key.hexdigest()[:16]}"


def tokenize_source(src: SourceConfig, cfg: DataConfig, tok: Tokenizer, folder: Path, dtype: np.dtype,
                    progress: bool = False, position: int = 0) -> dict:
    """Tokenize one source into `folder` (see above) unless a complete cache is there; returns its meta.json.
    Encoding runs in the tokenizer's Rust threads (all cores, the GIL released), so while one source's batch is
    encoded another thread can read and render the next source's documents."""
    meta_path = folder / "meta.json"
    if meta_path.exists():
        return {**json.loads(meta_path.read_text()), "reused": True}
    tmp = folder.with_name(f"{folder.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        lens: list[int] = []
        bar = tqdm(total=src.n, desc=f"tokenize {src.name}", unit="doc", disable=not progress, file=sys.stderr,
                   position=position, leave=True)
        with bar, open(tmp / "tokens.bin", "wb") as f:
            for chunk in _chunks(iter_documents(src, cfg), 4096):
                flat: list[int] = []
                for ids in tok.encode_batch(chunk):
                    flat.extend(ids)
                    flat.append(tok.eos_id)
                    lens.append(len(ids) + 1)
                np.asarray(flat, dtype).tofile(f)
                bar.update(len(chunk))
        if not lens:
            raise ValueError(f"source {src.name!r} has no documents")
        np.save(tmp / "doc_lens.npy", np.asarray(lens, np.int64))
        seconds = time.perf_counter() - t0
        meta = {"name": src.name, "identity": source_identity(src, cfg), "tokenizer_sha256": tok.sha256(),
                "dtype": dtype.name, "documents": len(lens), "tokens": int(sum(lens)), "seconds": seconds,
                "tokens_per_s": sum(lens) / max(seconds, 1e-9)}
        atomic_write_json(tmp / "meta.json", meta)
        try:
            tmp.rename(folder)
        except OSError:  # another build finished the same cache first: keep that one
            if not meta_path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**meta, "reused": False}


class TokenCache:
    """One source's cached tokens, memory-mapped: `tokens` (all documents back to back) and `doc_lens`."""

    def __init__(self, folder: Path):
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"token cache {folder} is missing or incomplete: rebuild the data "
                                    f"(`echochamber data`)")
        self.folder, self.meta = folder, json.loads(meta_path.read_text())
        self.doc_lens = np.load(folder / "doc_lens.npy", mmap_mode="r")
        self.tokens = np.memmap(folder / "tokens.bin", dtype=self.meta["dtype"], mode="r")

    @property
    def doc_starts(self) -> np.ndarray:
        lens = np.asarray(self.doc_lens)
        return np.cumsum(lens) - lens


# ----------------------------------------------------------------------------- building

def _chunks(it: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for x in it:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_data_tokenizer(cfg: DataConfig, sources: list[SourceConfig], cache_root: Path, progress: bool) -> Tokenizer:
    """The mixture's tokenizer: `data.tokenizer` (a missing file is an error, never a reason to train one), or a
    BPE trained on the first documents of every source (each source an equal share). A trained one is kept in
    CACHE_DIR/tokenizers/, keyed by the sources and the training settings (training is deterministic), so a
    rebuild of the same mixture with other rows finds it, and with it its token caches."""
    if cfg.tokenizer:
        return Tokenizer.load(cfg.tokenizer, what="data.tokenizer")
    per_source = max(1, cfg.tokenizer_docs // len(sources))
    key = hashlib.sha256(json.dumps([[source_identity(s, cfg) for s in sources], cfg.vocab_size, per_source],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root / "tokenizers" / f"bpe{cfg.vocab_size}-{key}.json"
    if path.exists():
        return Tokenizer.load(path)
    if progress:
        print(f"training a {cfg.vocab_size}-token BPE on up to {per_source} documents per source", file=sys.stderr)
    tok = train_tokenizer(itertools.chain.from_iterable(
        itertools.islice(iter_documents(s, cfg), per_source) for s in sources), cfg.vocab_size)
    tok.save(path)
    return tok


def build_dataset(cfg: DataConfig, out_dir: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Build (or find already built) the mixture of `cfg` in `out_dir`; returns the manifest.

    1. the tokenizer (given or trained); 2. each source tokenized once into its token cache (reused when
    there); 3. per split, the shuffled list of document occurrences, repeats included, that PackedDataset packs
    into rows: an index over the caches, not a copy of their tokens."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as it reads back from the manifest (tuples -> lists)
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if old and not force and old.get("config") == resolved and _complete(out_dir, old):
        print(f"{out_dir}: complete dataset with this config already there; skipping the build "
              f"(pass force / delete manifest.json to rebuild)", file=sys.stderr)
        return old
    sources = resolve_sources(cfg)
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.seq_len < 1:
        raise ValueError(f"data.seq_len must be >= 1, got {cfg.seq_len}")
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out_dir.parent / "token_cache"
    # From here until the new manifest lands, the folder is not a complete dataset.
    manifest_path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # 1. Tokenizer.
    tok = load_data_tokenizer(cfg, sources, cache_root, progress)
    tok.save(out_dir / "tokenizer.json")
    tok_sha = tok.sha256()
    dtype = np.dtype(np.uint16 if tok.vocab_size < 2**16 else np.uint32)
    t_tok = time.perf_counter()

    # 2. Token caches: the sources not cached yet are tokenized side by side (see tokenize_source).
    folders = [cache_folder(s, cfg, tok_sha, cache_root) for s in sources]
    todo = [i for i, f in enumerate(folders) if not (f / "meta.json").exists()]
    if todo and any(s.kind == "synthetic" for s in sources):
        _synthetic_problems(next(s for s in sources if s.kind == "synthetic"), cfg)  # the shared stream, once
    workers = max(1, min(len(todo), cfg.workers or (os.cpu_count() or 1) // 4))
    with ThreadPoolExecutor(workers) as pool:
        metas = list(pool.map(lambda i: tokenize_source(sources[i], cfg, tok, folders[i], dtype, progress,
                                                        todo.index(i) if i in todo else 0), range(len(sources))))
    caches = [TokenCache(f) for f in folders]
    t_encode = time.perf_counter()

    # 3. Hold out documents per source (before repeats, so no copy of a val document is trained on; a
    #    source's own seed, so it holds out the same documents in every mixture), repeat the train documents,
    #    shuffle the order of all occurrences, index.
    bases = np.cumsum([0] + [len(c.tokens) for c in caches])  # where each cache starts in the virtual concatenation
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}  # global token start of each occurrence
    lens_parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    stats = {}
    for s, c, base in zip(sources, caches, bases):
        lens, starts = np.asarray(c.doc_lens), base + c.doc_starts
        ids = np.random.default_rng([cfg.seed or 0, zlib.crc32(s.name.encode())]).permutation(len(lens))
        n_val = round(cfg.val_fraction * len(lens))
        if n_val >= len(lens):
            raise ValueError(f"source {s.name!r}: {len(lens)} documents leave none for training")
        train_ids, val_ids = np.tile(ids[n_val:], s.repeat), ids[:n_val]
        for split, sel in (("train", train_ids), ("val", val_ids)):
            parts[split].append(starts[sel])
            lens_parts[split].append(lens[sel])
        train_once = int(lens[ids[n_val:]].sum())
        stats[s.name] = {
            "kind": s.kind, "format": s.format, "path": s.path, "repeat": s.repeat,
            "documents": {"train": len(lens) - n_val, "val": n_val},
            "tokens_per_copy": train_once,
            "tokens": {"train": train_once * s.repeat, "val": int(lens[val_ids].sum())},
        }
    rng = np.random.default_rng(cfg.seed or 0)
    row_len = cfg.seq_len + 1
    splits = {}
    for split in ("train", "val"):
        order = rng.permutation(sum(len(p) for p in parts[split]))
        starts, lens = np.concatenate(parts[split])[order], np.concatenate(lens_parts[split])[order]
        ends = np.cumsum(lens)  # end of each occurrence in the split's token stream
        total = int(ends[-1]) if len(ends) else 0
        files = {"starts": f"{split}_starts.npy", "ends": f"{split}_ends.npy"}
        atomic_write(out_dir / files["starts"], lambda f: np.save(f, starts.astype(np.int64)))
        atomic_write(out_dir / files["ends"], lambda f: np.save(f, ends.astype(np.int64)))
        splits[split] = {"sequences": total // row_len, "tokens": total // row_len * row_len,
                         "dropped_tokens": total % row_len, "documents": len(order), "index": files}
    if cfg.val_fraction > 0 and splits["val"]["sequences"] == 0:
        raise ValueError(f"the validation split holds {splits['val']['dropped_tokens']} tokens, less than one row of "
                         f"{row_len}; raise data.val_fraction or the number of documents")

    n_train = sum(v["tokens"]["train"] for v in stats.values())
    for v in stats.values():
        v["share"] = v["tokens"]["train"] / n_train  # share of the training tokens (repeats included)
    encoded = [m for m in metas if not m["reused"]]
    n_encoded = sum(m["tokens"] for m in encoded)
    manifest = {
        "mixture": mixture_name(sources),
        "seq_len": cfg.seq_len, "row_len": row_len, "dtype": dtype.name,
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "tokenizer": "tokenizer.json",
        "tokenizer_sha256": tok_sha,
        "caches": [{"name": s.name, "dir": os.path.relpath(f.resolve(), out_dir.resolve()), "tokens": len(c.tokens),
                    "documents": len(c.doc_lens), "reused": m["reused"]}
                   for s, f, c, m in zip(sources, folders, caches, metas)],
        "sources": stats,
        "total_tokens": splits["train"]["tokens"] + splits["val"]["tokens"],  # in the rows, both splits
        "totals": {"documents": int(sum(len(c.doc_lens) for c in caches)),
                   "distinct_tokens": int(bases[-1]),
                   "train_tokens": n_train, "val_tokens": sum(v["tokens"]["val"] for v in stats.values())},
        "splits": splits,
        "git_commit": git_commit(),
        "config": resolved,
    }
    manifest["train_unigram_entropy"] = _entropy(out_dir, manifest, "train")
    t_end = time.perf_counter()
    manifest["timing"] = {"tokenizer_s": t_tok - t0, "encode_s": t_encode - t_tok, "total_s": t_end - t0,
                          "encoded_tokens": n_encoded,
                          "encode_tokens_per_s": n_encoded / max(t_encode - t_tok, 1e-9) if encoded else None}
    for stale in out_dir.iterdir():  # the shards or index of an earlier build of this folder
        if re.fullmatch(r"(train|val)_(\d{5}|starts|ends)\.npy", stale.name) and stale.name not in {
                f for sp in splits.values() for f in sp["index"].values()}:
            stale.unlink()
    atomic_write_json(manifest_path, manifest)  # last: its presence marks the dataset complete
    return manifest


def _complete(out_dir: Path, manifest: dict) -> bool:
    """Every file a manifest refers to is there (its index, its tokenizer and its complete token caches)."""
    files = [manifest.get("tokenizer", "")] + [f for s in manifest.get("splits", {}).values()
                                               for f in s.get("index", {}).values()]
    caches = [c["dir"] + "/meta.json" for c in manifest.get("caches", [])]
    return "caches" in manifest and all((out_dir / f).exists() for f in files + caches)


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the data first (`echochamber data`); a build that was "
                                f"interrupted leaves no manifest")
    manifest = json.loads(path.read_text())
    if "caches" not in manifest:
        raise ValueError(f"{path}: written by an older echochamber (packed shards, no token caches); rebuild the "
                         f"data with `echochamber data`")
    return manifest


# ----------------------------------------------------------------------------- reading

class PackedDataset:
    """Rows of one split. Row i is tokens [i * R, (i + 1) * R) of the split's stream, R = seq_len + 1: the
    split's document occurrences, in their shuffled order, concatenated (as OLMo packs: a row can start
    mid-document; the tail shorter than a row is dropped). Inputs row[:-1], targets row[1:].

    Nothing is copied per mixture: the stream is read through the index (per occurrence: where its document
    starts in the concatenation of the token caches, and where it ends in the stream) from the memory-mapped
    caches, so a row costs a binary search and a gather."""

    def __init__(self, data_dir: str | Path, split: Literal["train", "val"] = "train"):
        data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        if split not in manifest["splits"]:
            raise ValueError(f"{data_dir}: no split {split!r} (splits: {sorted(manifest['splits'])})")
        info = manifest["splits"][split]
        self.data_dir, self.split = data_dir, split
        self.seq_len: int = manifest["seq_len"]
        self.vocab_size: int = manifest["vocab_size"]
        self.eos_id: int = manifest["eos_id"]
        self.tokenizer_path = data_dir / manifest["tokenizer"]
        self.caches = [TokenCache(data_dir / c["dir"]) for c in manifest["caches"]]
        self._bases = np.cumsum([0] + [len(c.tokens) for c in self.caches])  # (caches + 1,)
        self._starts = np.load(data_dir / info["index"]["starts"], mmap_mode="r")  # (occurrences,) int64
        self._ends = np.load(data_dir / info["index"]["ends"], mmap_mode="r")  # (occurrences,) int64
        self.n_sequences: int = info["sequences"]

    def __len__(self) -> int:
        return self.n_sequences

    def tokens_at(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at `positions` (int64, any shape) of the split's stream."""
        occ = np.searchsorted(self._ends, positions, side="right")  # the occurrence holding each position
        starts = np.asarray(self._starts[occ])  # where each occurrence's document starts in the caches
        prev_end = np.where(occ > 0, self._ends[np.maximum(occ - 1, 0)], 0)  # where it starts in the stream
        g = starts + (positions - prev_end)  # global position in the concatenation of the caches
        which = np.searchsorted(self._bases, g, side="right") - 1
        out = np.empty(positions.shape, np.int64)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.caches[k].tokens[g[sel] - self._bases[k]]
        return out

    def batch(self, start: int, batch_size: int) -> torch.LongTensor:
        """Rows start .. start + batch_size - 1, wrapping around at n_sequences -> (B, seq_len + 1) int64."""
        if self.n_sequences == 0:
            raise ValueError(f"{self.data_dir}: the {self.split} split has no sequences")
        rows = (start + np.arange(batch_size, dtype=np.int64)) % self.n_sequences
        row_len = self.seq_len + 1
        return torch.from_numpy(self.tokens_at(rows[:, None] * row_len + np.arange(row_len)))


def _entropy(data_dir: Path, manifest: dict, split: str) -> float:
    """H = -sum_v p(v) log p(v) (nats) of the token frequencies of a split's document occurrences: each cached
    document's tokens counted as often as it occurs (repeats included; the dropped tail, less than a row, too)."""
    counts = np.zeros(manifest["vocab_size"], np.float64)
    info = manifest["splits"][split]
    starts = np.load(data_dir / info["index"]["starts"], mmap_mode="r")
    bases = np.cumsum([0] + [c["tokens"] for c in manifest["caches"]])
    for k, c in enumerate(manifest["caches"]):
        cache = TokenCache(data_dir / c["dir"])
        doc_starts = bases[k] + cache.doc_starts
        mine = np.asarray(starts)[(starts >= bases[k]) & (starts < bases[k + 1])]
        occurrences = np.bincount(np.searchsorted(doc_starts, mine), minlength=len(doc_starts))
        lens = np.asarray(cache.doc_lens)
        doc_ends = np.cumsum(lens)
        # Whole documents at a time, about 16M tokens per pass: per token, how often its document occurs.
        bounds = np.append(np.searchsorted(doc_ends, np.arange(0, doc_ends[-1], 1 << 24), side="right"), len(lens))
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a < b:
                lo, hi = doc_ends[a] - lens[a], doc_ends[b - 1]
                counts += np.bincount(np.asarray(cache.tokens[lo:hi]), np.repeat(occurrences[a:b], lens[a:b]),
                                      minlength=len(counts))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_entropy(data_dir: str | Path, split: Literal["train", "val"] = "train") -> float:
    """Entropy (nats/token) of the unigram distribution of a split's tokens: the loss of a model that predicts
    token frequencies and ignores context. A pretrained model's validation loss must be well below it."""
    return _entropy(Path(data_dir), load_manifest(data_dir), split)
