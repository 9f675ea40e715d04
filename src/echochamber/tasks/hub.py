"""The paper's datasets streamed from the Hugging Face hub (a cluster-side path: needs `pip install
'echochamber[hub]'` and network access, or a filled hub cache; nothing here runs on the laptop demo).

Each entry maps a short key to the hub dataset, its configuration and the same `RecordSpec` field mapping the
local loaders use (tasks/local.py), so a local JSONL copy of a dataset exercises exactly this mapping:

    key             hub id                       split   fields                          PAPER.md name
    tinygsm         TinyGSM/TinyGSM              train   question, code                  tg
    omi1            nvidia/OpenMathInstruct-1    train   question, generated_solution    omi1: correct_solutions/
                                                                                         train.jsonl only
    omi2            nvidia/OpenMathInstruct-2    train   problem, generated_solution     omi2: data/*.parquet, i.e.
                                                                                         train + train_1M/2M/5M
    fm3             HuggingFaceTB/finemath       train   text (config finemath-3plus)    fm3
    as              EleutherAI/proof-pile-2      train   text (config algebraic-stack)   as
    mmqa            meta-math/MetaMathQA         train   query, response                 mmqa
    gsm8k           openai/gsm8k                 train   question, answer (#### gold)    RL train / eval (test)
    math500         HuggingFaceH4/MATH-500       test    problem, answer                 eval
    aime            AI-MO/aimo-validation-aime   train   problem, answer                 eval (AIME 2022-2024, 90)
    aime_1983_2024  gneubig/aime-1983-2024       train   Question, Answer                eval (the authors' other AIME)

The data files are the ones the authors' scripts read (rosieyzh/openrlhf-pretrain: pretraining/data/*_to_tokens.py,
inference/run_inference_all.py): OpenMathInstruct-1 from its correct-solutions file alone, OpenMathInstruct-2 from
every parquet file under data/ (their glob: the full train split and the train_1M, train_2M and train_5M subsets
drawn from it, so those problems are seen more than once, as in their runs).

As problem sets they are named SOURCE "hub", SPLIT "KEY[:SPLIT]" (the dataset's own split when left out):
eval.datasets=[hub:gsm8k:test, hub:math500, hub:aime], rl.train_source=hub:gsm8k:train.

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
    data_files: str | None = None  # read these files ({split} filled in) with `builder` instead of the repo's loader
    builder: str = "json"  # the generic `datasets` builder for data_files: json | parquet
    split: str = "train"  # the split read when none is named (MATH-500 has only test; the AIME sets only train)


_HF = "hf://datasets"
HUB_DATASETS: dict[str, HubDataset] = {
    "tinygsm": HubDataset("TinyGSM/TinyGSM", None, SPECS["tinygsm"]),
    # The correct-solutions file only (the repo also holds incorrect_solutions/, which the authors never read).
    "omi1": HubDataset("nvidia/OpenMathInstruct-1", None, SPECS["omi1"],
                       data_files=f"{_HF}/nvidia/OpenMathInstruct-1/correct_solutions/{{split}}.jsonl"),
    # Every parquet file under data/, as the authors' glob read them: train plus the train_1M, train_2M and
    # train_5M subsets (split "train" here names that whole set, not the hub's `train` split alone).
    "omi2": HubDataset("nvidia/OpenMathInstruct-2", None, SPECS["omi2"],
                       data_files=f"{_HF}/nvidia/OpenMathInstruct-2/data/{{split}}*.parquet", builder="parquet"),
    "fm3": HubDataset("HuggingFaceTB/finemath", "finemath-3plus", SPECS["finemath"]),
    # proof-pile-2 ships a loading script, which recent `datasets` releases no longer run; its algebraic-stack
    # files are plain zstd-compressed JSON Lines, so the generic json builder reads them (needs `zstandard`).
    "as": HubDataset("EleutherAI/proof-pile-2", "algebraic-stack", SPECS["algebraic-stack"],
                     data_files=f"{_HF}/EleutherAI/proof-pile-2/algebraic-stack/{{split}}/*.jsonl.zst"),
    "mmqa": HubDataset("meta-math/MetaMathQA", None, SPECS["metamath"]),
    "gsm8k": HubDataset("openai/gsm8k", "main", SPECS["gsm8k"]),
    # The evaluation sets of the authors' inference/run_inference_all.py.
    "math500": HubDataset("HuggingFaceH4/MATH-500", None, SPECS["math500"], split="test"),
    "aime": HubDataset("AI-MO/aimo-validation-aime", None, SPECS["aime"]),  # AIME 2022-2024, 90 problems
    "aime_1983_2024": HubDataset("gneubig/aime-1983-2024", None, RecordSpec("Question", "Answer", id="ID")),
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


def iter_hub_records(key: str, split: str | None = None) -> Iterator[tuple[str, dict]]:
    """(location for errors, record) of a hub dataset's split (None: its own), streamed in the hub's order."""
    ds_lib = _datasets()
    d = _entry(key)
    split = split or d.split
    if d.data_files:
        ds = ds_lib.load_dataset(d.builder, data_files={split: d.data_files.format(split=split)}, split=split,
                                 streaming=True)
    else:
        ds = ds_lib.load_dataset(d.path, d.config, split=split, streaming=True)
    label = f"{d.path}[{d.config}]" if d.config else d.path
    for i, rec in enumerate(ds, 1):
        yield f"{label} {split} record {i}", rec


def hub_documents(key: str, split: str | None = None, n: int | None = None) -> Iterator[str]:
    """Pretraining documents (no EOS) of a hub dataset: its text, or question + "\\n\\n" + solution."""
    d = _entry(key)
    count = 0
    for where, rec in iter_hub_records(key, split):
        if n is not None and count >= n:
            return
        if kept(rec, d.spec, where):
            yield record_to_document(rec, d.spec, where)
            count += 1


def load_hub(key: str, split: str | None = None, n: int | None = None) -> list[Problem]:
    """The first n (kept) records of a hub dataset with gold answers (gsm8k, math500, aime, omi1, omi2, mmqa) as
    Problems; split None: the dataset's own (HubDataset.split)."""
    d = _entry(key)
    if d.spec.answer is None:
        raise ValueError(f"hub dataset {key!r} ({d.path}) has no gold answers; it is a pretraining source only")
    split = split or d.split
    out: list[Problem] = []
    for where, rec in iter_hub_records(key, split):
        if n is not None and len(out) >= n:
            break
        if kept(rec, d.spec, where):
            out.append(record_to_problem(rec, d.spec, where, f"{key}-{split}-{len(out):06d}"))
    return out
