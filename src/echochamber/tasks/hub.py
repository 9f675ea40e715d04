"""The paper's datasets streamed from the Hugging Face hub (a cluster-side path: needs `pip install
'echochamber[hub]'` and network access; nothing here runs on the laptop demo).

Each entry maps a short key to the hub dataset, its configuration and the same `RecordSpec` field mapping the
local loaders use (tasks/local.py), so a local JSONL copy of a dataset exercises exactly this mapping:

    key      hub id                       config            fields                              PAPER.md name
    tinygsm  TinyGSM/TinyGSM              -                 question, code                      tg
    omi1     nvidia/OpenMathInstruct-1    -                 question, generated_solution        omi1 (is_correct only)
    omi2     nvidia/OpenMathInstruct-2    -                 problem, generated_solution         omi2
    fm3      HuggingFaceTB/finemath       finemath-3plus    text                                fm3
    as       EleutherAI/proof-pile-2      algebraic-stack   text                                as
    mmqa     meta-math/MetaMathQA         -                 query, response                     mmqa
    gsm8k    openai/gsm8k                 main              question, answer (#### gold)        RL train / eval

Datasets are streamed (`streaming=True`), so the 12M-record OMI1 or the 14M-record OMI2 never sit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .problem import Problem
from .local import SPECS, RecordSpec, kept, record_to_document, record_to_problem


@dataclass(frozen=True)
class HubDataset:
    """Where one of the paper's datasets lives on the hub and how its records read."""
    path: str  # hub id, e.g. "nvidia/OpenMathInstruct-2"
    config: str | None  # configuration name, e.g. "finemath-3plus"
    spec: RecordSpec  # field mapping shared with the local loaders
    data_files: str | None = None  # read these files with the generic json builder instead of the repo's loader


HUB_DATASETS: dict[str, HubDataset] = {
    "tinygsm": HubDataset("TinyGSM/TinyGSM", None, SPECS["tinygsm"]),
    "omi1": HubDataset("nvidia/OpenMathInstruct-1", None, SPECS["omi1"]),
    "omi2": HubDataset("nvidia/OpenMathInstruct-2", None, SPECS["omi2"]),
    "fm3": HubDataset("HuggingFaceTB/finemath", "finemath-3plus", SPECS["finemath"]),
    # proof-pile-2 ships a loading script, which recent `datasets` releases no longer run; its algebraic-stack
    # files are plain zstd-compressed JSON Lines, so the generic json builder reads them (needs `zstandard`).
    "as": HubDataset("EleutherAI/proof-pile-2", "algebraic-stack", SPECS["algebraic-stack"],
                     data_files="hf://datasets/EleutherAI/proof-pile-2/algebraic-stack/{split}/*.jsonl.zst"),
    "mmqa": HubDataset("meta-math/MetaMathQA", None, SPECS["metamath"]),
    "gsm8k": HubDataset("openai/gsm8k", "main", SPECS["gsm8k"]),
}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("reading hub datasets needs the `datasets` package: pip install 'echochamber[hub]' "
                          "(and network access to huggingface.co); for local files use kind jsonl/parquet") from None
    return datasets


def _entry(key: str) -> HubDataset:
    if key not in HUB_DATASETS:
        raise ValueError(f"unknown hub dataset {key!r}; known: {', '.join(HUB_DATASETS)}")
    return HUB_DATASETS[key]


def iter_hub_records(key: str, split: str = "train") -> Iterator[tuple[str, dict]]:
    """(location for errors, record) of a hub dataset, streamed in the hub's order."""
    ds_lib = _datasets()
    d = _entry(key)
    if d.data_files:
        ds = ds_lib.load_dataset("json", data_files={split: d.data_files.format(split=split)}, split=split,
                                 streaming=True)
    else:
        ds = ds_lib.load_dataset(d.path, d.config, split=split, streaming=True)
    label = f"{d.path}[{d.config}]" if d.config else d.path
    for i, rec in enumerate(ds, 1):
        yield f"{label} {split} record {i}", rec


def hub_documents(key: str, split: str = "train", n: int | None = None) -> Iterator[str]:
    """Pretraining documents (no EOS) of a hub dataset: its text, or question + "\\n\\n" + solution."""
    d = _entry(key)
    count = 0
    for where, rec in iter_hub_records(key, split):
        if n is not None and count >= n:
            return
        if kept(rec, d.spec, where):
            yield record_to_document(rec, d.spec, where)
            count += 1


def load_hub(key: str, split: str = "train", n: int | None = None) -> list[Problem]:
    """The first n (kept) records of a hub dataset with gold answers (gsm8k, omi1, omi2, mmqa) as Problems."""
    d = _entry(key)
    if d.spec.answer is None:
        raise ValueError(f"hub dataset {key!r} ({d.path}) has no gold answers; it is a pretraining source only")
    out: list[Problem] = []
    for where, rec in iter_hub_records(key, split):
        if n is not None and len(out) >= n:
            break
        if kept(rec, d.spec, where):
            out.append(record_to_problem(rec, d.spec, where, f"{key}-{split}-{len(out):06d}"))
    return out
