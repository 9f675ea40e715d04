"""Problems from local files: GSM8K, MATH-500, AIME, OpenMathInstruct-1/2 samples, any JSONL or Parquet file.

One `RecordSpec` per dataset says which fields hold the question, the gold answer and a reference solution;
the same specs serve the hub loaders (tasks/hub.py), so a local copy of a dataset tests exactly the mapping
a cluster run streams from the hub.

Files are found, in order, at an explicit `path`, under an explicit `data_dir`, under `default_data_dir()`
(env ECHOCHAMBER_DATA, else ../shared/data from the working directory); a missing file is an error that says
where it looked. Nothing here requires ../shared/data to exist.

Bad records are errors that name the file and line (JSONL) or row (Parquet) and the missing field.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .problem import Problem

DATA_ENV = "ECHOCHAMBER_DATA"


# ----------------------------------------------------------------------------- field mapping

@dataclass(frozen=True)
class RecordSpec:
    """How one dataset's records map onto a Problem (and onto a pretraining document)."""
    question: str | None = "question"  # field with the question / problem statement
    answer: str | None = "answer"  # field the gold answer comes from (None: the dataset has no gold answers)
    solution: str | None = None  # field with a reference solution in the dataset's own format
    solution_optional: bool = False  # records may lack the solution field (AIME 2025 has none)
    text: str | None = None  # field holding a whole document instead of question + solution (FineMath, AS)
    id: str | None = None  # field with the record's id (None: "<name>-<index>")
    keep: str | None = None  # keep only records whose field is true (OpenMathInstruct-1: is_correct)
    gold: str = "plain"  # how the answer field becomes the gold string: plain | gsm8k (after ####) | metamath


SPECS: dict[str, RecordSpec] = {
    # GSM8K: `answer` is the worked solution ending in "#### 72"; the gold is the number after ####.
    "gsm8k": RecordSpec("question", "answer", solution="answer", gold="gsm8k"),
    "math500": RecordSpec("problem", "answer", solution="solution", id="unique_id"),
    "aime": RecordSpec("problem", "answer", solution="solution", solution_optional=True, id="id"),
    "omi1": RecordSpec("question", "expected_answer", solution="generated_solution", keep="is_correct"),
    "omi2": RecordSpec("problem", "expected_answer", solution="generated_solution"),
    "tinygsm": RecordSpec("question", None, solution="code"),  # no gold field: the code's value is the answer
    "metamath": RecordSpec("query", "response", solution="response", gold="metamath"),
    "finemath": RecordSpec(None, None, text="text"),
    "algebraic-stack": RecordSpec(None, None, text="text"),
}


def _gold_gsm8k(value: str) -> str | None:
    """'... #### 1,234' -> '1234'."""
    if "####" not in value:
        return None
    return value.rsplit("####", 1)[1].strip().replace(",", "") or None


_METAMATH_ANSWER = re.compile(r"The answer is:?\s*(.+?)\s*$", re.DOTALL)


def _gold_metamath(value: str) -> str | None:
    """MetaMathQA responses end with 'The answer is: 72'."""
    m = _METAMATH_ANSWER.search(value)
    return m.group(1).strip() if m else None


_GOLD = {"plain": lambda v: str(v).strip() or None, "gsm8k": _gold_gsm8k, "metamath": _gold_metamath}


def _field(rec: dict, key: str, where: str) -> Any:
    if key not in rec:
        raise KeyError(f"{where}: no field {key!r} (fields: {', '.join(sorted(rec))})")
    return rec[key]


def _text(rec: dict, key: str, where: str) -> str:
    value = _field(rec, key, where)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")
    return value


def kept(rec: dict, spec: RecordSpec, where: str) -> bool:
    """False for a record the spec's `keep` field filters out (e.g. an incorrect OMI1 solution)."""
    return spec.keep is None or bool(_field(rec, spec.keep, where))


def record_to_problem(rec: dict, spec: RecordSpec, where: str, default_id: str) -> Problem:
    """One record -> Problem; `where` ("file.jsonl:12") names the record in errors."""
    if spec.question is None or spec.answer is None:
        raise ValueError(f"{where}: this dataset has no question/gold-answer fields; it can be a pretraining "
                         f"source but not a problem set")
    question = _text(rec, spec.question, where)
    raw = _field(rec, spec.answer, where)
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ValueError(f"{where}: field {spec.answer!r} is {type(raw).__name__}, expected a string or number")
    gold = _GOLD[spec.gold](raw if isinstance(raw, str) else str(raw))
    if gold is None:
        raise ValueError(f"{where}: no gold answer in field {spec.answer!r} ({spec.gold} format): {str(raw)[-80:]!r}")
    has_solution = spec.solution is not None and (spec.solution in rec or not spec.solution_optional)
    solution = _text(rec, spec.solution, where) if has_solution else None
    pid = str(_field(rec, spec.id, where)) if spec.id else default_id
    used = {spec.question, spec.answer, spec.solution, spec.id}
    # Scalar fields ride along (MATH-500 level/subject, AIME year, OMI dataset): per-group analysis needs them.
    meta = {k: v for k, v in rec.items() if k not in used and isinstance(v, (str, int, float, bool)) and
            not (isinstance(v, str) and len(v) > 200)}
    return Problem(id=pid, question=question, answer=gold, solution=solution, meta=meta)


def record_to_document(rec: dict, spec: RecordSpec, where: str) -> str:
    """One record -> a pretraining document without EOS: its text field, or question + blank line + solution."""
    if spec.text:
        return _text(rec, spec.text, where)
    if spec.question is None or spec.solution is None:
        raise ValueError(f"{where}: the spec names neither a text field nor question + solution fields")
    return _text(rec, spec.question, where) + "\n\n" + _text(rec, spec.solution, where)


# ----------------------------------------------------------------------------- reading files

def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("path:line", record) for every non-blank line; bytes that are not UTF-8, bad JSON or a non-object is
    a ValueError naming the line. Lines end at \\n only (as editors and `wc -l` count them); a UTF-8 byte-order
    mark at the start is skipped."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                                 "of the line)") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; [[[[... nested too deep
                raise ValueError(f"{path}:{i}: not valid JSON ({type(e).__name__}: {str(e)[:100]})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
            yield f"{path}:{i}", rec


def iter_parquet(path: str | Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """("path: row N", record) in batches, reading only `columns` (missing ones are an error naming them)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise KeyError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=columns):
        for rec in batch.to_pylist():
            row += 1
            yield f"{path}: row {row}", rec


def iter_records(path: str | Path, spec: RecordSpec | None = None) -> Iterator[tuple[str, dict]]:
    """Records of a .jsonl or .parquet file (by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        cols = None if spec is None else [c for c in (spec.question, spec.answer, spec.solution, spec.text,
                                                       spec.id, spec.keep) if c]
        return iter_parquet(path, list(dict.fromkeys(cols)) if cols else None)
    if path.suffix in (".jsonl", ".json", ".test"):
        return iter_jsonl(path)
    raise ValueError(f"{path}: unknown file type {path.suffix!r} (expected .jsonl or .parquet)")


def load_file(path: str | Path, spec: RecordSpec, n: int | None = None, name: str | None = None) -> list[Problem]:
    """The first n kept records of a file as Problems; ids default to "<name>-<index>"."""
    name = name or Path(path).stem
    out: list[Problem] = []
    for where, rec in iter_records(path, spec):
        if n is not None and len(out) >= n:
            break
        if kept(rec, spec, where):
            out.append(record_to_problem(rec, spec, where, f"{name}-{len(out):05d}"))
    return out


# ----------------------------------------------------------------------------- finding files

def default_data_dir() -> Path | None:
    """Where local datasets live: $ECHOCHAMBER_DATA if set, else ../shared/data from the working directory if
    it exists, else None. (An explicit setting wins over a folder that merely happens to exist.)"""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    shared = Path.cwd().parent / "shared" / "data"
    return shared if shared.is_dir() else None


def find_file(relative: str, what: str, path: str | Path | None = None,
              data_dir: str | Path | None = None, hub: str | None = None) -> Path:
    """`path` if given, else data_dir/relative (data_dir: given, else default_data_dir()); errors say where they
    looked, how to point at the files, and `hub`, the same dataset's hub name, where it has one."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what}: file {path} not found")
        return Path(path)
    how = (f"set {DATA_ENV}=DIR or eval.data_path=DIR to the folder holding {relative} (in Python: data_dir=DIR "
           f"or path=FILE)" + (f", or read it from the Hugging Face hub as {hub} (pip install 'echochamber[hub]')"
                              if hub else ""))
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None:
        raise FileNotFoundError(f"{what}: no data folder ({DATA_ENV} is not set and there is no "
                                f"{Path.cwd().parent / 'shared' / 'data'}): {how}")
    f = root / relative
    if not f.is_file():
        origin = "data_dir" if data_dir is not None else (DATA_ENV if os.environ.get(DATA_ENV) else "../shared/data")
        raise FileNotFoundError(f"{what}: {f} not found (looked under {root}, from {origin}): {how}")
    return f


# ----------------------------------------------------------------------------- the datasets

def load_gsm8k(split: str = "test", n: int | None = None, path=None, data_dir=None) -> list[Problem]:
    """GSM8K train (7473) / test (1319): `question`, gold = the number after '####' without commas."""
    if split not in ("train", "test"):
        raise ValueError(f"gsm8k split must be train or test, got {split!r}")
    f = find_file(f"gsm8k/{split}.jsonl", f"gsm8k {split}", path, data_dir, hub=f"hub:gsm8k:{split}")
    return load_file(f, SPECS["gsm8k"], n, name=f"gsm8k-{split}")


def load_math500(split: str = "test", n: int | None = None, path=None, data_dir=None) -> list[Problem]:
    """MATH-500 (500 problems): `problem`, `answer` (LaTeX), ids from `unique_id`."""
    if split != "test":
        raise ValueError(f"math500 has only a test split, got {split!r}")
    return load_file(find_file("math500/test.jsonl", "math500", path, data_dir, hub="hub:math500"), SPECS["math500"], n)


AIME_FILES = (("aime/aime_1983_2023.jsonl", 1983, 2023), ("aime/aime_2024.jsonl", 2024, 2024),
              ("aime/aime_2025.jsonl", 2025, 2025))
AIME_HUB = "hub:aime (AIME 2022-2024, the authors' set) or hub:aime_1983_2024"


def aime_years(split: str) -> tuple[int, int]:
    """'2024' -> (2024, 2024); '1983-2023' -> (1983, 2023); 'all' or 'test' -> every year."""
    if split in ("all", "test"):
        return 0, 9999
    m = re.fullmatch(r"(\d{4})(?:-(\d{4}))?", split)
    if not m:
        raise ValueError(f"aime split must be a year (2024), a range (1983-2023) or 'all', got {split!r}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if lo > hi:
        raise ValueError(f"aime split {split!r}: the range is empty")
    return lo, hi


def load_aime(split: str = "all", n: int | None = None, path=None, data_dir=None) -> list[Problem]:
    """AIME problems of the years in `split` (see aime_years), in year order; gold = the integer answer."""
    lo, hi = aime_years(split)
    if path is not None:
        files = [find_file("", f"aime {split}", path)]
    else:
        files = [find_file(rel, f"aime {split}", None, data_dir, hub=AIME_HUB) for rel, a, b in AIME_FILES
                 if a <= hi and lo <= b]
        if not files:
            raise ValueError(f"aime split {split!r}: no AIME file covers those years "
                             f"({', '.join(f'{a}-{b}' for _, a, b in AIME_FILES)})")
    out: list[Problem] = []
    for f in files:
        for where, rec in iter_records(f):
            if n is not None and len(out) >= n:
                return out
            if (lo, hi) != (0, 9999) and not lo <= int(_field(rec, "year", where)) <= hi:
                continue
            out.append(record_to_problem(rec, SPECS["aime"], where, f"aime-{len(out):04d}"))
    return out


def load_omi(version: int, split: str = "train", n: int | None = None, path=None, data_dir=None) -> list[Problem]:
    """OpenMathInstruct-1/2 records (the sample files hold 70 of each): question, expected_answer, and the
    generated_solution as the reference solution. OMI1 keeps only is_correct records, as the paper did."""
    if split not in ("train", "sample"):
        raise ValueError(f"omi{version} split must be train (the local sample), got {split!r}")
    f = find_file(f"openmathinstruct{version}/sample.jsonl", f"omi{version}", path, data_dir,
                  hub=f"hub:omi{version}:train")
    return load_file(f, SPECS[f"omi{version}"], n, name=f"omi{version}")


def load_table(path: str | Path, n: int | None = None, *, question_field: str = "question",
               answer_field: str = "answer", solution_field: str | None = None, id_field: str | None = None,
               keep_field: str | None = None, gold: str = "plain") -> list[Problem]:
    """Any .jsonl / .parquet file with configurable field names (gold: plain | gsm8k | metamath)."""
    if gold not in _GOLD:
        raise ValueError(f"gold must be one of {sorted(_GOLD)}, got {gold!r}")
    spec = RecordSpec(question_field, answer_field, solution=solution_field, id=id_field, keep=keep_field, gold=gold)
    return load_file(find_file("", str(path), path), spec, n)
