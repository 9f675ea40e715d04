"""Rewards for RL and grading of files: 1.0 when a response's answer equals the gold, else 0.0.

No format reward, no length penalty (as in the paper). formats.grade_many labels and grades a batch: code runs
in the sandbox pool, numbers (GSM8K, AIME) are settled in this process, everything math-verify must judge goes
to killable worker processes (verify.MathVerifyPool), so a pathological answer scores 0 instead of hanging the
trainer. `grade_file` (`echochamber grade`) does the same for any JSONL file of responses.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from . import formats
from .formats import Graded, Mode
from .runio import write_jsonl
from .sandbox import SandboxPool
from .tasks.local import iter_jsonl
from .verify import Verifier


def reward(graded: Graded) -> float:
    """r = 1 if the answer equals the gold else 0 (the same definition in both labelling modes)."""
    return 1.0 if graded.correct else 0.0


def compute_rewards(responses: Sequence[str], golds: Sequence[str | None], *, mode: Mode = "structure",
                    pool: SandboxPool | None = None, prompts: Sequence[str] | None = None,
                    verifier: Verifier | None = None) -> tuple[list[float], list[Graded]]:
    """Grade a batch (one sandbox call, batched math-verify) and return (rewards, verdicts)."""
    graded = formats.grade_many(responses, golds, mode=mode, pool=pool, prompts=prompts, verifier=verifier)
    return [reward(g) for g in graded], graded


# ----------------------------------------------------------------------------------------------------------
# Grading a file (`echochamber grade`)


def gold_answer(gold: Any) -> str | None:
    """A gold answer from a record field: numbers become strings; a GSM8K solution gives the part after '####'."""
    if gold is None:
        return None
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"expected a string or number, got {type(gold).__name__}")
    gold = str(gold)
    return gold.rsplit("####", 1)[1].strip() if "####" in gold else gold.strip()


OUTPUT_FIELDS = ("label", "answer", "boxed", "correct", "transcript", "written_output", "real_output", "computed")


def grade_file(in_path: str | Path, out_path: str | Path, *, question_field: str | None = "question",
               response_field: str = "response", gold_field: str = "gold", mode: Mode = "structure",
               with_prompt: bool = False, pool: SandboxPool | None = None,
               verifier: Verifier | None = None, progress: bool = True, batch_size: int = 512) -> dict:
    """Grade a JSONL file of responses; write each record with OUTPUT_FIELDS added (formats.Graded's), in order.

    Checks before grading anything that out_path can be written and is not the input. response_field and
    gold_field are required in every record; bad input (a missing field, malformed JSON, bytes that are not
    UTF-8) is one ValueError naming file:line (and field). A record that already has a field named like an
    output keeps it as `input_<name>`.
    with_prompt (paper mode only): grade question + response, as the paper's RL reward did (its evaluation,
    the default here, grades the response alone); then question_field is required too.
    Returns formats.format_stats(...) of the labels and verdicts.
    """
    from tqdm import tqdm

    in_path, out_path = Path(in_path), Path(out_path)
    check_output_path(in_path, out_path)
    records: list[dict] = []
    responses: list[str] = []
    golds: list[str | None] = []
    prompts: list[str] = []
    required = [response_field, gold_field] + ([question_field] if with_prompt and question_field else [])
    for where, rec in iter_jsonl(in_path):
        for name in required:
            if name not in rec:
                raise ValueError(f"{where}: missing field {name!r} (fields: {', '.join(rec)})")
        if not isinstance(rec[response_field], str):
            raise ValueError(f"{where}: field {response_field!r} must be a string, "
                             f"got {type(rec[response_field]).__name__}")
        try:
            golds.append(gold_answer(rec[gold_field]))
        except TypeError as e:
            raise ValueError(f"{where}: field {gold_field!r}: {e}") from None
        records.append(rec)
        responses.append(rec[response_field])
        prompts.append(str(rec[question_field]) if with_prompt and question_field else "")

    graded: list[Graded] = []
    with tqdm(total=len(records), desc=f"grade {in_path.name}", unit="rec", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            stop = start + batch_size
            graded += formats.grade_many(responses[start:stop], golds[start:stop], mode=mode, pool=pool,
                                         prompts=prompts[start:stop] if with_prompt else None, verifier=verifier)
            bar.update(len(responses[start:stop]))

    def out(rec: dict, g: Graded) -> dict:
        rec = {(f"input_{k}" if k in OUTPUT_FIELDS else k): v for k, v in rec.items()}
        return {**rec, **{name: getattr(g, name) for name in OUTPUT_FIELDS}}

    write_jsonl(out_path, (out(r, g) for r, g in zip(records, graded)))
    return formats.format_stats([g.label for g in graded], [g.correct for g in graded])


def check_output_path(in_path: Path, out_path: Path) -> None:
    """Fail before any work when the results could not be written: out_path is the input itself, a folder, or
    in a place this process cannot write (probed with a temporary file, the only thing created and removed)."""
    if not in_path.is_file():
        raise FileNotFoundError(f"{in_path}: no such file")
    if out_path.is_dir():
        raise ValueError(f"{out_path}: the output is a folder; give a file name")
    if out_path.resolve() == in_path.resolve() or (out_path.exists() and os.path.samefile(out_path, in_path)):
        raise ValueError(f"{out_path}: the output is the input file; grading would overwrite it")
    folder = out_path.parent  # atomic_write creates missing folders: probe the nearest one that exists
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{out_path}: cannot write the output there ({e.strerror or e})") from None


def format_summary_table(summary: dict) -> str:
    """A fixed-width table of formats.format_stats(...) for the terminal."""
    lines = [f"{'label':<8} {'n':>7} {'share':>7} {'correct':>8} {'accuracy':>9}"]
    for lab, r in summary.items():
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"{lab:<8} {r['n']:>7} {r['share']:>7.3f} {r['correct']:>8} {acc:>9}")
    return "\n".join(lines)
