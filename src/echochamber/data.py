"""Pretraining data: mixtures of sources -> tokenizer -> tokenized, packed, memory-mapped shards.

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

`build_dataset` writes to OUT_DIR:
  tokenizer.json                   byte-level BPE, single-digit tokens, `<|endoftext|>` = EOS
  train_00000.npy, ...             (rows, seq_len + 1) uint16/uint32; input = row[:-1], target = row[1:]
  val_00000.npy, ...               the same for the held-out documents
  manifest.json                    written LAST: its presence means the dataset is complete
Documents are held out for validation before packing (before repeats: no copy of a val document is trained on);
the document order, repeats included, is shuffled with the seed, so rows mix sources and the copies of a repeated
document land in different rows; documents are then concatenated and cut into rows (as OLMo does: a row can
start mid-document; the tail shorter than a row is dropped and counted in the manifest).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .runio import atomic_write, atomic_write_json, git_commit
from .tasks.hub import HUB_DATASETS, hub_documents
from .tasks.local import RecordSpec, iter_jsonl, iter_parquet, kept, record_to_document
from .tasks.synthetic import FORMAT_NAMES, SyntheticConfig, SyntheticProblem, generate, render_solution
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
    n: int | None = None  # documents to use (synthetic: problems to generate); None = DataConfig.n_problems / all
    error_rate: float | None = None  # synthetic: chance a solution has a wrong step; None = synthetic.error_rate[format]


@dataclass
class DataConfig:
    """What `echochamber data` builds. The paper: OLMo data pipeline, Llama-2 tokenizer, 2048-token sequences."""
    mixture: str | None = "tg_omi1_text"  # paper-style name; None = use `sources` as listed
    mixture_kind: Literal["synthetic", "hub"] = "synthetic"  # what a mixture key means unless `sources` names it
    sources: list[SourceConfig] = field(default_factory=list)  # explicit sources (override mixture keys by name)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # generator knobs for synthetic sources
    n_problems: int = 20000  # problems per synthetic source (before repeats)
    share_problems: bool = False  # synthetic sources render the SAME problems (default: disjoint draws per source)
    seq_len: int = 256  # tokens the model sees per row (rows hold seq_len + 1); paper 2048
    vocab_size: int = 1024  # BPE vocabulary when training the tokenizer (paper: Llama-2, 32000)
    tokenizer: str | None = None  # an existing tokenizer.json to use instead of training one (then vocab_size is its)
    tokenizer_docs: int = 30_000  # at most this many documents (an equal share from each source) train the tokenizer
    val_fraction: float = 0.02  # share of each source's documents held out for validation (not repeated)
    seed: int | None = None  # document split and shuffle (and the synthetic sources' problem draws); None = the
    # run's top-level `seed` (0 outside a run config)
    shard_sequences: int = 65536  # rows per shard file


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
        return dataclasses.replace(s, format=fmt, n=s.n or cfg.n_problems)
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
        rng = random.Random(f"{cfg.seed or 0}/{src.name}/render")  # which solutions get a wrong step
        for p in _synthetic_problems(src, cfg):
            yield p.question + "\n\n" + render_solution(p, src.format, error_rate=rate, rng=rng)
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


# The train stream of the last SyntheticConfig used (its JSON -> problems): tokenizer training and encoding read
# every source twice, and each source is a slice of the same stream, so it is generated once per build.
_STREAM: dict[str, list[SyntheticProblem]] = {}


def _synthetic_problems(src: SourceConfig, cfg: DataConfig) -> list[SyntheticProblem]:
    """A synthetic source's problems: its own slice of one train stream (or the stream's start when shared)."""
    synthetic = [s for s in resolve_sources(cfg) if s.kind == "synthetic"]
    if cfg.share_problems:
        start, total = 0, max(s.n for s in synthetic)
    else:
        names = [s.name for s in synthetic]
        if src.name not in names:
            raise ValueError(f"source {src.name!r} is not a synthetic source of this config ({names})")
        start, total = sum(s.n for s in synthetic[:names.index(src.name)]), sum(s.n for s in synthetic)
    key = json.dumps(dataclasses.asdict(cfg.synthetic), sort_keys=True)
    if len(_STREAM.get(key, ())) < total:
        _STREAM.clear()
        _STREAM[key] = generate("train", total, cfg.synthetic)  # a longer stream extends a shorter one
    return _STREAM[key][start:start + src.n]


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


def build_dataset(cfg: DataConfig, out_dir: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Build (or find already built) the packed dataset of `cfg` in `out_dir`; returns the manifest."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as it reads back from the manifest (tuples -> lists)
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if old and not force and old.get("config") == resolved and all(
            (out_dir / f).exists() for f in _manifest_files(old)):
        print(f"{out_dir}: complete dataset with this config already there; skipping the build "
              f"(pass force / delete manifest.json to rebuild)", file=sys.stderr)
        return old
    sources = resolve_sources(cfg)
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.seq_len < 1 or cfg.shard_sequences < 1:
        raise ValueError("data.seq_len and data.shard_sequences must be >= 1")
    # From here until the new manifest lands, the folder is not a complete dataset.
    manifest_path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".tokens.*.tmp"):  # left by a build that was killed
        stale.unlink()
    t0 = time.perf_counter()

    # 1. Tokenizer: given, or trained on the first documents of every source (each source an equal share).
    if cfg.tokenizer:
        tok = Tokenizer.load(cfg.tokenizer)
    else:
        per_source = max(1, cfg.tokenizer_docs // len(sources))
        if progress:
            print(f"training a {cfg.vocab_size}-token BPE on up to {per_source} documents per source", file=sys.stderr)
        tok = train_tokenizer(itertools.chain.from_iterable(
            itertools.islice(iter_documents(s, cfg), per_source) for s in sources), cfg.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    dtype = np.dtype(np.uint16 if tok.vocab_size < 2**16 else np.uint32)
    t_tok = time.perf_counter()

    # 2. Tokenize each source's distinct documents once into one flat file: doc tokens + EOS, doc after doc.
    tmp = out_dir / f".tokens.{os.getpid()}.tmp"
    try:
        doc_lens: list[np.ndarray] = []  # per source: tokens of each document, EOS included
        with open(tmp, "wb") as f:
            for s in sources:
                lens: list[int] = []
                bar = tqdm(total=s.n, desc=f"tokenize {s.name}", unit="doc", disable=not progress, file=sys.stderr)
                for chunk in _chunks(iter_documents(s, cfg), 4096):
                    flat: list[int] = []
                    for ids in tok.encode_batch(chunk):
                        flat.extend(ids)
                        flat.append(tok.eos_id)
                        lens.append(len(ids) + 1)
                    np.asarray(flat, dtype).tofile(f)
                    bar.update(len(chunk))
                bar.close()
                if not lens:
                    raise ValueError(f"source {s.name!r} has no documents")
                doc_lens.append(np.asarray(lens, np.int64))
        lengths = np.concatenate(doc_lens)
        offsets = np.cumsum(lengths) - lengths  # where each document starts in the flat file
        tokens = np.memmap(tmp, dtype=dtype, mode="r")
        t_encode = time.perf_counter()

        # 3. Hold out documents per source (before repeats, so no copy of a val document is trained on), repeat
        #    the train documents, shuffle the document order, pack.
        rng = np.random.default_rng(cfg.seed or 0)
        train_parts, val_parts, stats, first = [], [], {}, 0
        for s, lens in zip(sources, doc_lens):
            ids = first + rng.permutation(len(lens))
            first += len(lens)
            n_val = round(cfg.val_fraction * len(lens))
            if n_val >= len(lens):
                raise ValueError(f"source {s.name!r}: {len(lens)} documents leave none for training")
            train_parts.append(np.tile(ids[n_val:], s.repeat))
            val_parts.append(ids[:n_val])
            train_once = int(lengths[ids[n_val:]].sum())
            stats[s.name] = {
                "kind": s.kind, "format": s.format, "path": s.path, "repeat": s.repeat,
                "documents": {"train": len(lens) - n_val, "val": n_val},
                "tokens_per_copy": train_once,
                "tokens": {"train": train_once * s.repeat, "val": int(lengths[ids[:n_val]].sum())},
            }
        splits = {split: _pack(tokens, offsets, lengths, rng.permutation(np.concatenate(parts)), cfg.seq_len + 1,
                               cfg.shard_sequences, out_dir, split, progress)
                  for split, parts in (("train", train_parts), ("val", val_parts))}
        del tokens
    finally:
        tmp.unlink(missing_ok=True)
    if cfg.val_fraction > 0 and splits["val"]["sequences"] == 0:
        raise ValueError(f"the validation split holds {splits['val']['dropped_tokens']} tokens, less than one row of "
                         f"{cfg.seq_len + 1}; raise data.val_fraction or the number of documents")

    n_train = sum(v["tokens"]["train"] for v in stats.values())
    for v in stats.values():
        v["share"] = v["tokens"]["train"] / n_train  # share of the training tokens (repeats included)
    t_end = time.perf_counter()
    n_encoded = int(lengths.sum())
    manifest = {
        "mixture": mixture_name(sources),
        "seq_len": cfg.seq_len, "row_len": cfg.seq_len + 1, "dtype": dtype.name,
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "tokenizer": "tokenizer.json",
        "sources": stats,
        "total_tokens": splits["train"]["tokens"] + splits["val"]["tokens"],  # in the shards, both splits
        "totals": {"documents": int(len(lengths)), "distinct_tokens": n_encoded,
                   "train_tokens": n_train, "val_tokens": sum(v["tokens"]["val"] for v in stats.values())},
        "splits": splits,
        "train_unigram_entropy": _entropy(out_dir, splits["train"]["shards"], tok.vocab_size),
        "timing": {"tokenizer_s": t_tok - t0, "encode_s": t_encode - t_tok, "total_s": t_end - t0,
                   "encode_tokens_per_s": n_encoded / max(t_encode - t_tok, 1e-9)},
        "git_commit": git_commit(),
        "config": resolved,
    }
    keep = set(_manifest_files(manifest))
    for stale in out_dir.iterdir():  # shards of an earlier, larger build of this folder
        if re.fullmatch(r"(train|val)_\d{5}\.npy", stale.name) and stale.name not in keep:
            stale.unlink()
    atomic_write_json(manifest_path, manifest)  # last: its presence marks the dataset complete
    return manifest


def _pack(tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, order: np.ndarray, row_len: int,
          shard_rows: int, out_dir: Path, split: str, progress: bool) -> dict:
    """Concatenate documents in `order`, cut into rows of `row_len` tokens, write shards of `shard_rows` rows."""
    shards: list[str] = []
    pending: list[np.ndarray] = []  # full rows not yet written, each (n, row_len)
    n_pending = n_rows = 0
    carry = np.empty(0, tokens.dtype)  # the start of a row still being filled

    def write(rows: np.ndarray) -> None:
        name = f"{split}_{len(shards):05d}.npy"
        atomic_write(out_dir / name, lambda f: np.save(f, rows))
        shards.append(name)

    bar = tqdm(total=int(lengths[order].sum()), desc=f"pack {split}", unit="tok", unit_scale=True,
               disable=not progress, file=sys.stderr)
    for i in range(0, len(order), 65536):
        docs = order[i:i + 65536]
        lens = lengths[docs]
        # Flat-file index of every token of these documents: document start + position inside the document.
        pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        buf = np.concatenate([carry, tokens[np.repeat(offsets[docs], lens) + pos]])
        n = len(buf) // row_len
        pending.append(buf[:n * row_len].reshape(n, row_len))
        carry = buf[n * row_len:]
        n_pending += n
        while n_pending >= shard_rows:
            rows = np.concatenate(pending)
            write(rows[:shard_rows])
            pending, n_pending = [rows[shard_rows:]], n_pending - shard_rows
            n_rows += shard_rows
        bar.update(int(lens.sum()))
    bar.close()
    if n_pending:
        write(np.concatenate(pending))
        n_rows += n_pending
    return {"sequences": n_rows, "tokens": n_rows * row_len, "dropped_tokens": len(carry), "shards": shards}


def _manifest_files(manifest: dict) -> list[str]:
    return [manifest["tokenizer"]] + [f for s in manifest["splits"].values() for f in s["shards"]]


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the data first (`echochamber data`); a build that was "
                                f"interrupted leaves no manifest")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- reading

class PackedDataset:
    """Rows of one split, memory-mapped. Row i holds seq_len + 1 tokens: inputs row[:-1], targets row[1:]."""

    def __init__(self, data_dir: str | Path, split: Literal["train", "val"] = "train"):
        data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        if split not in manifest["splits"]:
            raise ValueError(f"{data_dir}: no split {split!r} (splits: {sorted(manifest['splits'])})")
        self.data_dir, self.split = data_dir, split
        self.seq_len: int = manifest["seq_len"]
        self.vocab_size: int = manifest["vocab_size"]
        self.eos_id: int = manifest["eos_id"]
        self.tokenizer_path = data_dir / manifest["tokenizer"]
        self.shards = [np.load(data_dir / f, mmap_mode="r") for f in manifest["splits"][split]["shards"]]
        sizes = np.array([len(s) for s in self.shards], np.int64)
        self._ends = np.cumsum(sizes)  # rows before the end of each shard
        self._starts = self._ends - sizes
        self.n_sequences: int = int(self._ends[-1]) if len(sizes) else 0

    def __len__(self) -> int:
        return self.n_sequences

    def batch(self, start: int, batch_size: int) -> torch.LongTensor:
        """Rows start .. start + batch_size - 1, wrapping around at n_sequences -> (B, seq_len + 1) int64."""
        if self.n_sequences == 0:
            raise ValueError(f"{self.data_dir}: the {self.split} split has no sequences")
        rows = (start + np.arange(batch_size)) % self.n_sequences
        shard = np.searchsorted(self._ends, rows, side="right")
        out = np.empty((batch_size, self.seq_len + 1), np.int64)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.shards[k][rows[sel] - self._starts[k]]
        return torch.from_numpy(out)


def _entropy(data_dir: Path, shards: list[str], vocab_size: int) -> float:
    """H = -sum_v p(v) log p(v) (nats) of the token frequencies in `shards`."""
    counts = np.zeros(vocab_size, np.int64)
    for f in shards:
        arr = np.load(data_dir / f, mmap_mode="r")
        for i in range(0, len(arr), 65536):
            counts += np.bincount(np.asarray(arr[i:i + 65536]).ravel(), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_entropy(data_dir: str | Path, split: Literal["train", "val"] = "train") -> float:
    """Entropy (nats/token) of the unigram distribution of a split's tokens: the loss of a model that predicts
    token frequencies and ignores context. A pretrained model's validation loss must be well below it."""
    manifest = load_manifest(data_dir)
    return _entropy(Path(data_dir), manifest["splits"][split]["shards"], manifest["vocab_size"])
