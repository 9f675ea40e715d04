"""Mixtures -> token caches + index: naming, per-source accounting, document layout, caches shared between
mixtures, exact resumable reading, errors."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from echochamber.data import (DataConfig, PackedDataset, SourceConfig, build_dataset, iter_documents, load_manifest,
                              mixture_name, parse_mixture_name, resolve_sources, unigram_entropy)
from echochamber.tasks.hub import HUB_DATASETS
from echochamber.tasks.synthetic import computation_key, generate
from echochamber.tokenizer import EOS, Tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------- mixture names

@pytest.mark.parametrize("name, parts", [
    ("as_fm3_tg", [("as", 1), ("fm3", 1), ("tg", 1)]),
    ("as_fm3_tg_4xomi1", [("as", 1), ("fm3", 1), ("tg", 1), ("omi1", 4)]),
    ("as_fm3_8xtg", [("as", 1), ("fm3", 1), ("tg", 8)]),
    ("as_fm3_omi2_mmqa", [("as", 1), ("fm3", 1), ("omi2", 1), ("mmqa", 1)]),
    ("tg_omi1_2xtext", [("tg", 1), ("omi1", 1), ("text", 2)]),
    ("12xomi2", [("omi2", 12)]),
])
def test_mixture_name_round_trip(name, parts):
    assert parse_mixture_name(name) == parts
    assert mixture_name(parts) == name
    assert mixture_name([SourceConfig(k, repeat=r) for k, r in parts]) == name


@pytest.mark.parametrize("name, message", [
    ("as_fm3_wiki", "unknown source key 'wiki'"),
    ("tg_0xomi1", "repeat of 'omi1' must be >= 1"),
    ("tg__omi1", "cannot read part ''"),
    ("tg_-2xomi1", "cannot read part '-2xomi1'"),
    ("tg_2xtg", "'tg' appears twice"),
])
def test_mixture_name_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_mixture_name(name)


def test_custom_keys_come_from_sources(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"question": "q", "solution": "s"}])
    cfg = DataConfig(mixture="3xmine", sources=[SourceConfig("mine", "jsonl", path=str(path))])
    [src] = resolve_sources(cfg)
    assert (src.name, src.kind, src.repeat) == ("mine", "jsonl", 3)
    # A source whose own repeat contradicts the mixture name is refused rather than silently overridden.
    cfg.sources[0].repeat = 2
    with pytest.raises(ValueError, match="repeat 2 contradicts"):
        resolve_sources(cfg)


def test_source_resolution_errors(tmp_path):
    with pytest.raises(ValueError, match="'as' has no synthetic version"):
        resolve_sources(DataConfig(mixture="as_tg"))
    with pytest.raises(ValueError, match="'text' has no hub dataset"):
        resolve_sources(DataConfig(mixture="tg_text", mixture_kind="hub"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        resolve_sources(DataConfig(mixture=None, sources=[SourceConfig("x", "jsonl", path=str(tmp_path / "missing.jsonl"))]))
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        resolve_sources(DataConfig(mixture=None, sources=[SourceConfig("tg", repeat=0)]))
    with pytest.raises(ValueError, match="does not contain"):
        resolve_sources(DataConfig(mixture="tg", sources=[SourceConfig("omi1")]))
    with pytest.raises(ValueError, match="unknown hub dataset 'wiki'"):
        resolve_sources(DataConfig(mixture=None, sources=[SourceConfig("w", "hub", path="wiki")]))
    # The paper's mixture on the hub: keys map to tasks/hub.py's datasets (not streamed here: no network).
    hub = resolve_sources(DataConfig(mixture="as_fm3_tg_4xomi1", mixture_kind="hub"))
    assert [(s.kind, s.path, s.repeat) for s in hub] == [("hub", "as", 1), ("hub", "fm3", 1), ("hub", "tinygsm", 1),
                                                         ("hub", "omi1", 4)]
    assert HUB_DATASETS["omi1"].path == "nvidia/OpenMathInstruct-1" and HUB_DATASETS["tinygsm"].spec.solution == "code"


# ----------------------------------------------------------------------------- synthetic mixtures

def _synthetic(tmp_path: Path, mixture: str, **kw) -> tuple[DataConfig, Path, dict]:
    cfg = DataConfig(mixture=mixture, n_problems=300, seq_len=128, vocab_size=512, val_fraction=0.05, **kw)
    out = tmp_path / mixture
    return cfg, out, build_dataset(cfg, out, progress=False)


def test_a_hub_source_s_cache_changes_with_the_files_it_reads(monkeypatch):
    """The token cache of a hub source is keyed by the files tasks/hub.py reads: OMI2's four parquet sets (the
    authors' glob) are another cache than the hub's `train` split alone, which an earlier mapping read."""
    from echochamber.data import source_identity
    from echochamber.tasks import hub

    cfg = DataConfig(mixture="as_fm3_tg_omi2", mixture_kind="hub")
    [omi2] = [s for s in resolve_sources(cfg) if s.name == "omi2"]
    now = source_identity(omi2, cfg)
    assert now["hub"]["data_files"].endswith("/data/{split}*.parquet")
    monkeypatch.setitem(hub.HUB_DATASETS, "omi2", dataclasses.replace(HUB_DATASETS["omi2"], data_files=None))
    assert source_identity(omi2, cfg) != now


def _problems(cfg: DataConfig, name: str) -> list[str]:
    """The computations (numbers and operations, not names or story) behind a synthetic source's documents."""
    [src] = [s for s in resolve_sources(cfg) if s.name == name]
    by_question = {p.question: computation_key(p.givens, p.steps) for p in generate("train", 3 * src.n, cfg.synthetic)}
    return [by_question[d.split("\n\n")[0]] for d in iter_documents(src, cfg)]


def test_synthetic_mixture_accounting_and_layout(tmp_path):
    cfg, out, m = _synthetic(tmp_path, "tg_omi1_2xtext")
    assert m["mixture"] == "tg_omi1_2xtext" and m["dtype"] == "uint16"
    tok = Tokenizer.load(out / "tokenizer.json")
    assert m["vocab_size"] == tok.vocab_size <= 512 and m["eos_id"] == tok.eos_id
    src = m["sources"]
    assert [src[k]["format"] for k in ("tg", "omi1", "text")] == ["tinygsm", "omi1", "text"]
    assert all(sum(s["documents"].values()) == 300 for s in src.values())
    for split in ("train", "val"):
        info = m["splits"][split]
        assert sum(s["tokens"][split] for s in src.values()) == info["tokens"] + info["dropped_tokens"]
        assert info["tokens"] == info["sequences"] * 129
    # The 2x source holds exactly twice the tokens of the same source at 1x (same problems: seeds follow names).
    _, _, m1 = _synthetic(tmp_path, "tg_omi1_text")
    assert src["text"]["tokens"]["train"] == 2 * src["text"]["tokens_per_copy"] == 2 * m1["sources"]["text"]["tokens"]["train"]
    assert src["tg"]["tokens"] == m1["sources"]["tg"]["tokens"]

    # Shards decode back to exactly the sources' documents: question, blank line, solution, EOS.
    rows = PackedDataset(out, "train").batch(0, m["splits"]["train"]["sequences"])
    pieces = tok.decode(rows.reshape(-1).tolist()).split(EOS)[1:-1]
    expected = {s.name: set(iter_documents(s, cfg)) for s in resolve_sources(cfg)}
    by_source = {name: [p for p in pieces if p in docs] for name, docs in expected.items()}
    assert sum(map(len, by_source.values())) == len(pieces)  # every whole document is one of the sources'
    assert all("\n\n" in p and not p.startswith("\n") for p in pieces)
    assert all("def simple_math_problem" in p for p in by_source["tg"])
    assert all("<llm-code>" in p for p in by_source["omi1"])
    n_tg, n_text = len(by_source["tg"]), len(by_source["text"])
    assert 1.6 < n_text / n_tg < 2.4  # 2x text documents per tg document


def test_synthetic_sources_draw_disjoint_problems_unless_shared(tmp_path):
    cfg = DataConfig(mixture="tg_omi1_text", n_problems=200)
    keys = {name: set(_problems(cfg, name)) for name in ("tg", "omi1", "text")}
    assert all(len(k) == 200 for k in keys.values())
    # Different problems per source, like the paper's datasets: not one computation in common.
    assert not (keys["tg"] & keys["omi1"]) and not (keys["tg"] & keys["text"]) and not (keys["omi1"] & keys["text"])
    assert not set().union(*keys.values()) & {computation_key(p.givens, p.steps) for p in generate("test", 500)}
    shared = dataclasses.replace(cfg, share_problems=True)
    assert _problems(shared, "tg") == _problems(shared, "omi1") == _problems(shared, "text")


def test_synthetic_error_rate(tmp_path):
    """A source's error_rate (or synthetic.error_rate[format]) makes that share of its boxed answers wrong."""
    def wrong_share(cfg: DataConfig, name: str) -> float:
        [src] = [s for s in resolve_sources(cfg) if s.name == name]
        gold = {p.question: p.gold for p in generate("train", src.n, cfg.synthetic)}
        docs = [d.split("\n\n", 1) for d in iter_documents(src, cfg)]
        return sum(f"\\boxed{{{gold[question]}}}" not in solution for question, solution in docs) / len(docs)

    cfg = DataConfig(mixture="text", n_problems=400, sources=[SourceConfig("text", error_rate=0.5)])
    assert 0.4 < wrong_share(cfg, "text") < 0.6
    cfg = DataConfig(mixture="text", n_problems=400)
    assert wrong_share(cfg, "text") == 0
    cfg.synthetic.error_rate["text"] = 0.25
    assert 0.15 < wrong_share(cfg, "text") < 0.35


# ----------------------------------------------------------------------------- local files

def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(n: int, tag: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.integers(2, 999, size=2)
        out.append({"prob": f"{tag} {i}: what is {a} plus {b}?",
                    "sol": f"We add {a} and {b}: {a} + {b} = {a + b}.\nThe answer is \\boxed{{{a + b}}}.",
                    "ok": bool(i % 4)})
    return out


def _decode_documents(data_dir: Path, split: str) -> tuple[list[str], int]:
    """All documents of a split, in packed order (the first and the last may be cut), and the EOS count."""
    tok = Tokenizer.load(data_dir / "tokenizer.json")
    ds = PackedDataset(data_dir, split)
    ids = ds.batch(0, ds.n_sequences).reshape(-1).tolist()
    return tok.decode(ids).split(EOS), ids.count(tok.eos_id)


def test_local_jsonl_and_parquet_mixture(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = _jsonl(tmp_path / "a.jsonl", _records(300, "alpha", 0))
    b = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(_records(300, "beta", 1)), b)
    src = dict(question_field="prob", solution_field="sol")
    cfg = DataConfig(mixture="a_2xb", sources=[SourceConfig("a", "jsonl", path=str(a), keep_field="ok", **src),
                                               SourceConfig("b", "parquet", path=str(b), **src)],
                     seq_len=64, vocab_size=300, val_fraction=0.1)
    out = tmp_path / "data"
    m = build_dataset(cfg, out, progress=False)

    sa, sb = m["sources"]["a"], m["sources"]["b"]
    assert sa["documents"]["train"] + sa["documents"]["val"] == 225  # keep_field dropped every 4th record
    assert (sb["documents"]["train"], sb["documents"]["val"]) == (270, 30)
    # Repeats: b's training tokens count twice; the shard rows hold exactly the counted tokens (less the tail).
    assert sb["tokens"]["train"] == 2 * sb["tokens_per_copy"]
    for split in ("train", "val"):
        info = m["splits"][split]
        assert sum(s["tokens"][split] for s in m["sources"].values()) == info["tokens"] + info["dropped_tokens"]
        assert info["dropped_tokens"] < cfg.seq_len + 1
        assert info["sequences"] == PackedDataset(out, split).n_sequences
    # The index, not a copy: the mixture folder holds no tokens, each cache holds each distinct document once.
    assert [c["tokens"] for c in m["caches"]] == [sa["tokens_per_copy"] + sa["tokens"]["val"],
                                                   sb["tokens_per_copy"] + sb["tokens"]["val"]]
    assert m["splits"]["train"]["documents"] == sa["documents"]["train"] + 2 * sb["documents"]["train"]

    docs, n_eos = _decode_documents(out, "train")
    whole = docs[1:-1]  # the first and last piece may be cut by the packing
    assert len(whole) >= 0.9 * n_eos and all(d.count("\n\n") == 1 for d in whole)
    assert all(d.startswith(("alpha ", "beta ")) and d.split("\n\n")[0].endswith("?") for d in whole)
    alpha = {d for d in whole if d.startswith("alpha")}
    beta = [d for d in whole if d.startswith("beta")]
    assert len(set(beta)) < len(beta)  # 2x copies of beta documents appear twice
    assert all(int(d.split(":")[0].split()[1]) % 4 for d in alpha)  # kept records only
    # Validation documents are never trained on, including the second copy of a repeated source.
    val_docs, _ = _decode_documents(out, "val")
    assert not set(val_docs[1:-1]) & set(whole)

    # Same config again: the complete dataset is found and not rebuilt.
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert build_dataset(cfg, out, progress=False) == m
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_real_openmathinstruct_sample(tmp_path):
    omi1, omi2 = SHARED / "openmathinstruct1" / "sample.jsonl", SHARED / "openmathinstruct2" / "sample.jsonl"
    if not omi1.exists() or not omi2.exists():
        pytest.skip("../shared/data not present: no OpenMathInstruct samples")
    cfg = DataConfig(mixture="omi1_omi2", seq_len=128, vocab_size=512, val_fraction=0.1, sources=[
        SourceConfig("omi1", "jsonl", path=str(omi1), solution_field="generated_solution", keep_field="is_correct"),
        SourceConfig("omi2", "jsonl", path=str(omi2), question_field="problem", solution_field="generated_solution")])
    m = build_dataset(cfg, tmp_path / "d", progress=False)
    n_correct = sum(json.loads(line)["is_correct"] for line in omi1.read_text().splitlines())
    assert sum(m["sources"]["omi1"]["documents"].values()) == n_correct
    assert sum(m["sources"]["omi2"]["documents"].values()) == 70
    docs, _ = _decode_documents(tmp_path / "d", "train")
    assert any("<llm-code>" in d for d in docs) and any("\\boxed{" in d for d in docs)


def test_file_errors_name_file_line_and_field(tmp_path):
    good = {"question": "q?", "solution": "s."}
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(good) + "\n{oops\n")
    no_field = _jsonl(tmp_path / "nofield.jsonl", [good, good, {"question": "q?"}])
    wrong_type = _jsonl(tmp_path / "wrongtype.jsonl", [{"question": "q?", "solution": 5}])
    for path, message in [(bad_json, r"bad.jsonl:2: not valid JSON"),
                          (no_field, r"nofield.jsonl:3: no field 'solution'"),
                          (wrong_type, r"wrongtype.jsonl:1: field 'solution' is int")]:
        cfg = DataConfig(mixture=None, sources=[SourceConfig("x", "jsonl", path=str(path))], vocab_size=260)
        with pytest.raises((ValueError, KeyError), match=message):
            build_dataset(cfg, tmp_path / "out", progress=False)
        assert not (tmp_path / "out" / "manifest.json").exists()
        assert not list((tmp_path / "token_cache").glob("*.tmp.*"))  # the unfinished cache is cleaned up
        assert not list((tmp_path / "token_cache").glob("*/meta.json"))  # and never counts as complete

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}]), tmp_path / "t.parquet")
    cfg = DataConfig(mixture=None, sources=[SourceConfig("p", "parquet", path=str(tmp_path / "t.parquet"))])
    with pytest.raises(KeyError, match=r"t.parquet: no column 'solution'"):
        build_dataset(cfg, tmp_path / "out2", progress=False)


def test_packed_dataset_batches_are_deterministic_and_wrap(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"question": r["prob"], "solution": r["sol"]} for r in _records(200, "q", 3)])
    cfg = DataConfig(mixture=None, sources=[SourceConfig("a", "jsonl", path=str(path))], seq_len=32,
                     vocab_size=300, val_fraction=0.1)
    m = build_dataset(cfg, tmp_path / "d", progress=False)
    ds = PackedDataset(tmp_path / "d", "train")
    n = ds.n_sequences
    # The rows are the split's document occurrences, in index order, concatenated and cut every 33 tokens.
    cache = ds.caches[0]
    starts, ends = np.load(tmp_path / "d" / "train_starts.npy"), np.load(tmp_path / "d" / "train_ends.npy")
    stream = np.concatenate([cache.tokens[s:s + e - p] for s, e, p in zip(starts, ends, np.r_[0, ends[:-1]])])
    everything = stream[:n * 33].reshape(n, 33)
    assert len(stream) == n * 33 + m["splits"]["train"]["dropped_tokens"]
    assert np.array_equal(ds.batch(0, n).numpy(), everything)
    b = ds.batch(n - 5, 12)
    assert b.shape == (12, 33) and str(b.dtype) == "torch.int64"
    assert np.array_equal(b.numpy(), everything[[*range(n - 5, n), *range(7)]])
    assert np.array_equal(ds.batch(n - 5, 12), PackedDataset(tmp_path / "d", "train").batch(n - 5, 12))
    assert np.array_equal(ds.batch(3 + 2 * n, 4), ds.batch(3, 4))  # positions past the end wrap modulo n
    assert ds.vocab_size == load_manifest(tmp_path / "d")["vocab_size"] and int(b.max()) < ds.vocab_size
    # Unigram entropy: between 0 and log(vocab), and the frequencies of the split's tokens (the dropped tail,
    # less than one row, is counted too: hence the tolerance).
    p = np.bincount(stream, minlength=ds.vocab_size) / stream.size
    h = unigram_entropy(tmp_path / "d")
    assert h == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum(), rel=1e-9) and 0 < h < np.log(ds.vocab_size)

    # Rebuilding elsewhere with the saved tokenizer gives the same rows (vocab_size is then the tokenizer's),
    # from the same token cache (same source, same tokenizer).
    cfg2 = dataclasses.replace(cfg, tokenizer=str(tmp_path / "d" / "tokenizer.json"), vocab_size=999)
    m2 = build_dataset(cfg2, tmp_path / "d2", progress=False)
    assert [c["reused"] for c in m2["caches"]] == [True] and m2["timing"]["encoded_tokens"] == 0
    assert np.array_equal(PackedDataset(tmp_path / "d2", "train").batch(0, n), ds.batch(0, n))
    # A changed config rebuilds in place.
    m3 = build_dataset(dataclasses.replace(cfg2, seq_len=16), tmp_path / "d2", progress=False)
    assert m3["config"]["seq_len"] == 16 and PackedDataset(tmp_path / "d2", "train").batch(0, 2).shape == (2, 17)
    # Without data.tokenizer: the BPE trained for this mixture is found again, and so are its token caches.
    m4 = build_dataset(dataclasses.replace(cfg, seq_len=16), tmp_path / "d3", progress=False)
    assert m4["tokenizer_sha256"] == m["tokenizer_sha256"] and m4["timing"]["encoded_tokens"] == 0


def test_mixtures_sharing_a_source_tokenize_it_once(tmp_path, monkeypatch):
    """Two mixtures that share a source, with one tokenizer: the shared source is encoded by the first build
    only; the second reads its cache, and its rows hold the same documents as a cold build of that mixture."""
    files = {name: _jsonl(tmp_path / f"{name}.jsonl", [{"question": r["prob"], "solution": r["sol"]}
                                                        for r in _records(150, name, seed)])
             for seed, name in enumerate(("alpha", "beta", "gamma"))}
    base = DataConfig(mixture=None, seq_len=64, val_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    warm = build_dataset(dataclasses.replace(base, sources=[SourceConfig("alpha", "jsonl", path=str(files["alpha"]))]),
                         tmp_path / "tok", progress=False)  # only to get a tokenizer for both mixtures
    base.tokenizer = str(tmp_path / "tok" / "tokenizer.json")

    encoded: list[str] = []  # the first word ("alpha", "beta", ...) of every document handed to the tokenizer
    real = Tokenizer.encode_batch
    monkeypatch.setattr(Tokenizer, "encode_batch",
                        lambda self, texts: (encoded.extend(t.split()[0] for t in texts), real(self, texts))[1])

    def mixture(*parts, cache_dir=base.cache_dir):  # "2xbeta": source beta, two copies
        return dataclasses.replace(base, cache_dir=cache_dir, mixture="_".join(parts), sources=[
            SourceConfig(key, "jsonl", path=str(files[key])) for key, _ in parse_mixture_name("_".join(parts), tuple(files))])

    m1 = build_dataset(mixture("alpha", "beta"), tmp_path / "ab", progress=False)
    assert sorted(set(encoded)) == ["beta"] and len(encoded) == 150  # alpha was cached by the first build
    encoded.clear()
    m2 = build_dataset(mixture("2xbeta", "gamma"), tmp_path / "bg", progress=False)
    assert sorted(set(encoded)) == ["gamma"] and len(encoded) == 150  # beta: tokenized once for both mixtures
    assert [c["reused"] for c in m2["caches"]] == [True, False] and m1["caches"][1]["dir"].endswith(
        Path(m2["caches"][0]["dir"]).name)
    assert m2["sources"]["beta"]["tokens"]["train"] == 2 * m1["sources"]["beta"]["tokens"]["train"]
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 3  # alpha, beta, gamma: one cache each

    # A cold build of the second mixture in a fresh cache gives the same rows.
    encoded.clear()
    cold = dataclasses.replace(mixture("2xbeta", "gamma", cache_dir=str(tmp_path / "cold")), workers=2)
    build_dataset(cold, tmp_path / "bg_cold", progress=False)  # both sources tokenized side by side
    assert sorted(set(encoded)) == ["beta", "gamma"]
    a, b = PackedDataset(tmp_path / "bg", "train"), PackedDataset(tmp_path / "bg_cold", "train")
    assert a.n_sequences == b.n_sequences and np.array_equal(a.batch(0, a.n_sequences), b.batch(0, b.n_sequences))
    assert warm["caches"][0]["reused"] is False


def test_missing_or_interrupted_dataset_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        PackedDataset(tmp_path, "train")


def test_a_given_tokenizer_is_used_or_its_absence_is_an_error(tmp_path):
    """data.tokenizer (the paper's Llama-2 tokenizer.json): a missing file stops the build with the key's name,
    never a silently trained BPE; a Llama-style file gives documents that end with its </s>, with no <s>."""
    from llama_like import save_llama_like

    path = _jsonl(tmp_path / "a.jsonl", [{"question": r["prob"], "solution": r["sol"]} for r in _records(100, "q", 5)])
    cfg = DataConfig(mixture=None, sources=[SourceConfig("a", "jsonl", path=str(path))], seq_len=32,
                     val_fraction=0.1, vocab_size=32000, tokenizer=str(tmp_path / "llama" / "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match=r"data.tokenizer .*llama/tokenizer.json not found"):
        build_dataset(cfg, tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "tokenizer.json").exists()
    save_llama_like([r["prob"] + "\n\n" + r["sol"] for r in _records(100, "q", 5)], tmp_path / "llama")
    m = build_dataset(cfg, tmp_path / "d", progress=False)
    assert (m["eos_id"], m["vocab_size"]) == (2, Tokenizer.load(tmp_path / "llama").vocab_size)
    rows = PackedDataset(tmp_path / "d", "train").batch(0, 20).reshape(-1).tolist()
    assert rows.count(2) >= 5 and 1 not in rows  # </s> ends documents; no <s> anywhere
