"""Problem sources: the synthetic generator, local files and hub datasets."""

from __future__ import annotations

from .problem import Problem  # noqa: F401  (re-exported: `from echochamber.tasks import Problem`)


SOURCES = ("synthetic", "gsm8k", "math500", "aime", "omi1", "omi2", "jsonl", "parquet", "hub")


def load_problems(source: str, split: str, n: int | None = None, *, path: str | None = None,
                  data_dir: str | None = None, cfg=None, **fields) -> list[Problem]:
    """Problems of one source and split, the first `n` of them (None: all; synthetic: cfg.train/test_size).

    source     split
    synthetic  train | test | hard | longer | larger | renamed
                                                          cfg: a SyntheticConfig (None: defaults)
    gsm8k      train | test                               files: DATA/gsm8k/{split}.jsonl
    math500    test                                       DATA/math500/test.jsonl
    aime       2024 | 2025 | 1983-2023 | any YEAR or A-B | all (= test)
    omi1/omi2  train (the local samples)                  DATA/openmathinstruct{1,2}/sample.jsonl
    jsonl      the file (or give path=)                   fields: question_field, answer_field, solution_field,
    parquet    the file (or give path=)                           id_field, keep_field, gold (plain|gsm8k|metamath)
    hub        KEY[:SPLIT] of tasks.hub.HUB_DATASETS, e.g. "gsm8k:test", "math500", "aime" (needs `datasets` and
               network or a filled hub cache; SPLIT left out: the dataset's own, e.g. MATH-500's test)

    path: an explicit file for the dataset; data_dir: the folder holding the datasets (DATA above; default
    tasks.local.default_data_dir()).
    """
    if fields and source not in ("jsonl", "parquet"):
        raise TypeError(f"load_problems({source!r}): unexpected arguments {sorted(fields)}")
    if source != "synthetic" and cfg is not None:
        raise TypeError(f"load_problems({source!r}): cfg is for the synthetic source only")
    if source == "synthetic":
        from .synthetic import load

        return load(split, n, cfg)
    from . import local

    if source == "gsm8k":
        return local.load_gsm8k(split, n, path, data_dir)
    if source == "math500":
        return local.load_math500(split, n, path, data_dir)
    if source == "aime":
        return local.load_aime(split, n, path, data_dir)
    if source in ("omi1", "omi2"):
        return local.load_omi(int(source[-1]), split, n, path, data_dir)
    if source in ("jsonl", "parquet"):
        file = path or split
        if not str(file).endswith(f".{source}"):
            raise ValueError(f"load_problems({source!r}): expected a .{source} file, got {file!r}")
        return local.load_table(file, n, **fields)
    if source == "hub":
        from .hub import load_hub

        key, _, hub_split = split.partition(":")
        return load_hub(key, hub_split or None, n)
    raise ValueError(f"unknown problem source {source!r}; expected one of {', '.join(SOURCES)}")
