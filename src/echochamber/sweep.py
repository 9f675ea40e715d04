"""`echochamber sweep`: every cell of a grid of config overrides, one run at a time, pretraining shared.

    echochamber sweep --config quickstart --grid rl.algo=grpo,ppo,ei --grid seed=0,1,2 --out runs/algos

The grid is the cartesian product of the --grid values (the last --grid varies fastest); positional KEY=VALUE
overrides apply to every cell. Keys joined by "+" move together on one axis, each set to the same value:
`--grid rl.interpreter+eval.interpreter=false,true` is two cells, not four; a value in parentheses gives each linked
key its own, in order: `--grid model.preset+pretrain.lr=(olmo-tiny,3e-3),(olmo-12m,1e-3)`. Cells run one after
another, never side by side: two torch jobs on a small machine slow each other about 10x. Every cell's config is
resolved before anything runs, so a typo in any cell stops the sweep at once with one line per bad cell.

Pretraining is the expensive stage and most sweeps vary only RL, so cells share it: the key of a pretrained model
hashes everything that can change it (the top-level seed and the data, model and pretrain sections), and cells
with equal keys start RL from the same model. The packed dataset is shared the same way, by the seed and the data
section alone. A cell whose config sets rl.init starts from that model and pretrains nothing; one that sets
pretrain.data_dir pretrains on that data.

    DIR/sweep.json                   one object per cell (rewritten atomically after every cell)
    DIR/report.html                  comparison table; the signature figure, one panel per group of seeds
    DIR/data/<key>/                  a packed dataset (echochamber data)
    DIR/pretrained/<key>/            a pretraining run; model/ is what the cells' RL starts from
    DIR/cells/<name>/cell.json       the cell's overrides and requested config
    DIR/cells/<name>/rl/             the cell's RL run (echochamber rl); <name> is e.g. rl.algo=ppo,seed=1

With `--launcher slurm` (or `local`) the cells run as submitit jobs instead, data and pretraining shared the same
way (launcher.py); without it, as described here.

Rerunning the same command skips finished cells (those with rl/summary.json) and resumes the others from their
checkpoints: every stage resumes by itself. A cell folder whose recorded config differs from the one asked for
now is an error, not a silent mix of two experiments.

While it runs, stdout has a line when a cell starts, a line per dataset for each of its evaluations as it lands
(`[cell 1/4] rl.kl_coef=0: eval step 4: synthetic_test  n=200  pass@1 0.415  pass@4 ...  formats: omi1 0.62 ...`)
and the cell's result when it ends (pass@1 before -> after, the two leading formats, RL minutes); the progress
bars and the RL loop's own tables go to stderr.

`--dry-run` runs nothing and writes nothing (not even DIR): it prints every cell (name, overrides as parsed),
its dataset (built or to build), its pretrained model (DIR/pretrained/<key>: finished, stopped at a checkpoint's
step, or not started; the other cells sharing it; or "rl.init given: no pretraining"), its RL run (finished, with
its result line, or its last checkpoint's step), and the wall time still to run, per cell and in total. Each
figure says where it comes from: times DIR recorded for cells with the same settings except seeds (pretraining's
metrics.jsonl tokens_per_s; RL's metrics.jsonl time/* per step and a finished cell's summary.json wall_seconds),
or else a few seconds of timing on this machine (plan.Stopwatch: an optimizer step, and a decoded token at the
rollout's and the evaluation's batch; the formulas are plan.rl_seconds'), whose RL figures are upper bounds
(every response counted at max_new_tokens). A shared pretraining counts once. Bad grids and configs fail as in a
real sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .checkpoint import latest_step
from .config import ConfigError, RunConfig, load_run_config, to_dict
from .data import build_dataset
from .evaluate import format_results
from .model import ModelConfig, config_from_dict
from .plan import (RLSeconds, Stopwatch, resolve_grad_accum, resolve_pretrain_steps, rl_eval_steps, rl_seconds,
                   run_model_config)
from .pretrain import COMPILE_MIN_STEPS, pretrain
from .report import write_sweep_report
from .rl.train import run_rl
from .runio import atomic_write_json, atomic_write_text, flatten, read_metrics
from .training import RunFolderError, exclusive

SUMMARY_FIELDS = ("dataset", "pass1_before", "pass1_after", "format_share_before", "format_share_after")


class SweepError(ValueError):
    """A grid or cell that cannot run; each line of the message is one problem."""


# ------------------------------------------------------------------------------------------------- the grid
def split_values(raw: str) -> list[str]:
    """'grpo,ppo' -> ['grpo', 'ppo']; commas inside brackets stay: '[a,b],(c,d)' -> ['[a,b]', '(c,d)']."""
    values, depth, cur = [], 0, ""
    for ch in raw:
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return values + [cur.strip()]


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """--grid KEY=V1,V2 arguments -> [(key, [raw values])]. Values stay strings: the config parses them as YAML,
    exactly as it parses a KEY=VALUE override."""
    grid, errors = [], []
    for spec in specs:
        key, eq, raw = spec.partition("=")
        key = key.strip()
        values = split_values(raw)
        if not eq or not key:
            errors.append(f"--grid {spec!r}: expected KEY=V1,V2,..., e.g. --grid rl.kl_coef=0,0.001")
        elif "out_dir" in key.split("+"):
            errors.append(f"--grid {spec!r}: out_dir cannot be swept (the sweep gives each cell DIR/cells/<name>)")
        elif "" in key.split("+"):
            errors.append(f"--grid {spec!r}: an empty key around '+' (linked keys are KEY1+KEY2=V1,V2)")
        elif set(key.split("+")) & {part for k, _ in grid for part in k.split("+")} or \
                len(set(key.split("+"))) < len(key.split("+")):
            errors.append(f"--grid {spec!r}: {key} is already a grid key; give all its values in one --grid")
        elif "" in values:
            errors.append(f"--grid {spec!r}: an empty value (a stray comma?)")
        elif len(set(values)) < len(values):
            errors.append(f"--grid {spec!r}: a value is repeated")
        elif bad := [v for v in values if _is_tuple(v) and len(split_values(v[1:-1])) != len(key.split("+"))]:
            errors.append(f"--grid {spec!r}: {bad[0]} has {len(split_values(bad[0][1:-1]))} values for "
                          f"{len(key.split('+'))} linked keys ({key})")
        else:
            grid.append((key, values))
    if errors:
        raise SweepError("\n".join(errors))
    return grid


def expand_grid(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The cartesian product, one {key: raw value} per cell; an empty grid is one cell with no overrides."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(vals for _, vals in grid))]


def _is_tuple(value: str) -> bool:
    return value.startswith("(") and value.endswith(")")


def linked(key: str, value: str) -> list[tuple[str, str]]:
    """One grid value as (key, value) pairs: "a+b" with "(1,2)" -> [(a, 1), (b, 2)]; with "1" -> [(a, 1), (b, 1)];
    a plain key -> [(key, value)]."""
    parts = key.split("+")
    return list(zip(parts, split_values(value[1:-1]))) if _is_tuple(value) else [(part, value) for part in parts]


def cell_overrides(values: dict[str, str]) -> list[str]:
    """A cell's grid values as KEY=VALUE overrides; a linked key "a+b" sets a and b (to one value or each its own)."""
    return [f"{part}={v}" for k, raw in values.items() for part, v in linked(k, raw)]


def named(values: dict[str, str]) -> list[tuple[str, str]]:
    """The (name, value) pairs a cell is known by: its grid keys, except that a linked key with one value per key
    is named key by key ('model.preset+pretrain.lr': '(olmo-12m,1e-3)' -> model.preset, pretrain.lr)."""
    return [pair for k, raw in values.items() for pair in (linked(k, raw) if _is_tuple(raw) else [(k, raw)])]


def cell_name(values: dict[str, str]) -> str:
    """{'rl.algo': 'ppo', 'seed': '1'} -> 'rl.algo=ppo,seed=1': readable, and safe as one folder name."""
    name = ",".join(f"{k}={v}" for k, v in named(values)) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def is_seed_key(key: str) -> bool:
    """`seed` and the stage seeds (data.seed, pretrain.seed, rl.seed): what a group of repeats varies."""
    return key == "seed" or key.endswith(".seed")


def group_over_seeds(cells: list[dict]) -> list[tuple[str, list[dict]]]:
    """Cells that differ only in seeds form one group, named by their other values; groups in first-seen order.
    Each cell is a dict with "overrides" ({key: value}); returns [(group name, cells)]."""
    groups: dict[str, list[dict]] = {}
    for cell in cells:
        rest = {k: v for k, v in cell["overrides"].items() if not is_seed_key(k)}
        groups.setdefault(",".join(f"{k}={_show(v)}" for k, v in rest.items()) or "all cells", []).append(cell)
    return list(groups.items())


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


# ------------------------------------------------------------------------------------------------- the cells
@dataclass
class Cell:
    name: str
    values: dict[str, str]  # grid values as typed on the command line
    cfg: RunConfig          # resolved, with the sweep's folders filled in
    requested: dict         # to_dict of the config as asked for, before the sweep filled in its folders
    data_dir: Path | None   # shared dataset to build, or None (pretrain.data_dir given, or nothing to pretrain)
    pretrain_dir: Path | None  # shared pretraining run, or None (rl.init given)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    def setting(self, key: str):
        """One setting of the cell's resolved config by its dotted key (of a linked key "a+b", a's)."""
        node = self.cfg
        for part in key.split("+")[0].split("."):
            node = getattr(node, part)
        return to_dict(node)

    def overrides(self) -> dict:
        """The grid values as the config parsed them (rl.lr=1e-4 -> 0.0001), by the names of `named`; a linked key
        "a+b" with one value for both by its first key."""
        return {k: self.setting(k) for k, _ in named(self.values)}


def _key(*parts) -> str:
    """A short stable hash of JSON-able settings: equal settings, equal key, in every process."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_key(cfg: RunConfig) -> str:
    # The sections hold their resolved seeds (data.seed, pretrain.seed default to the top-level `seed`), so a
    # grid over rl.seed shares one pretraining while a grid over seed pretrains once per seed.
    return _key(to_dict(cfg.data))


def pretrain_key(cfg: RunConfig) -> str:
    return _key(to_dict(cfg.data), to_dict(cfg.model), to_dict(cfg.pretrain))


def plan_cells(config: str, grid: list[tuple[str, list[str]]], overrides: list[str], out: Path) -> list[Cell]:
    """Resolve every cell's config and place its folders; every problem is reported together, one line each."""
    # The shared overrides, then each grid value on its own: a bad value is one line, not one per cell it is in.
    errors = _config_errors(config, overrides, "config")
    for key, vals in grid if not errors else ():
        for v in vals:
            errors += _config_errors(config, [*overrides, *cell_overrides({key: v})], f"--grid {key}={v}")
    if errors:
        raise SweepError("\n".join(errors))
    cells, seen = [], set()
    for values in expand_grid(grid):
        name = cell_name(values)
        if name in seen:  # two values that differ only in characters the folder name replaces
            errors.append(f"cell {name}: two cells would share this folder name; spell the values differently")
            continue
        seen.add(name)
        try:
            cfg = load_run_config(config, [*overrides, *cell_overrides(values)])
        except ConfigError as e:
            errors.append(f"cell {name}: {e}")
            continue
        requested = to_dict(cfg)
        requested.pop("out_dir")
        data_dir = pretrain_dir = None
        if cfg.rl.init is None:
            pretrain_dir = out / "pretrained" / pretrain_key(cfg)
            if cfg.pretrain.data_dir is None:
                data_dir = out / "data" / data_key(cfg)
                cfg.pretrain.data_dir = str(data_dir)
            cfg.rl.init = str(pretrain_dir / "model")
        cfg.out_dir = str(out / "cells" / name)
        cells.append(Cell(name, values, cfg, requested, data_dir, pretrain_dir))
    if errors:
        raise SweepError("\n".join(errors))
    for cell in cells:  # a folder from an earlier sweep with other settings: refuse to mix the two
        recorded = cell.out / "cell.json"
        if recorded.exists():
            old = json.loads(recorded.read_text()).get("config")
            diff = _setting_changes(old or {}, cell.requested)
            if diff:
                errors.append(f"cell {cell.name}: {cell.out} was run with other settings ({', '.join(diff[:5])} "
                              f"differ); use another --out or delete that folder")
    if errors:
        raise SweepError("\n".join(errors))
    return cells


def _setting_changes(recorded: dict, requested: dict) -> list[str]:
    """Keys whose value differs between a cell's recorded config and the one asked for now. A key the record
    lacks was added to the project after that cell ran; at its default value it is not a change (new options
    default to what the code did before them), so finished cells survive an upgrade."""
    before, now = flatten(recorded), flatten(requested)
    defaults = flatten(to_dict(RunConfig()))
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)
                  and not (k not in before and k in defaults and now.get(k) == defaults[k]))


def resolve_cells(config: str, grid_specs: list[str], overrides: list[str], out: Path) -> list[Cell]:
    """--grid arguments and overrides -> the cells (plan_cells); every problem at once, one line each."""
    try:
        grid = parse_grid(grid_specs)
    except SweepError as e:  # with the shared overrides' problems too: every mistake in one go
        raise SweepError("\n".join([str(e), *_config_errors(config, overrides, "config")])) from None
    return plan_cells(config, grid, overrides, out)


def _config_errors(config: str, overrides: list[str], where: str) -> list[str]:
    try:
        load_run_config(config, overrides)
    except ConfigError as e:
        return [f"{where}: {e}"]
    return []


# ------------------------------------------------------------------------------------------------- running
def _entry(cell: Cell, out: Path, status: str, summary: dict | None = None, error: str | None = None) -> dict:
    """One object of sweep.json; folders are relative to DIR so the sweep folder can be moved."""
    s = summary or {}
    entry = {"name": cell.name, "overrides": cell.overrides(), "status": status,
             "wall_seconds": s.get("wall_seconds"), "out_dir": str(cell.out.relative_to(out)),
             **{k: s.get(k) for k in SUMMARY_FIELDS},
             "pretrained": str(cell.pretrain_dir.relative_to(out)) if cell.pretrain_dir else None}
    if error:
        entry["error"] = error
    return entry


def _result_line(s: dict) -> str:
    def top(shares: dict) -> str:
        return ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])[:2] if v > 0)
    return (f"pass@1 {s['pass1_before']:.1%} -> {s['pass1_after']:.1%}, formats {top(s['format_share_before'])} "
            f"-> {top(s['format_share_after'])}, RL {s['wall_seconds'] / 60:.1f} min")


def eval_printer(head: str) -> Callable[[dict], None]:
    """run_rl's on_eval for a cell: each evaluation's results (evaluate.format_results: pass@1, pass@k, format
    shares), one line per dataset on stdout, prefixed with the cell, through tqdm.write so that they pass around the
    progress bars instead of into them. (Without it the loop prints the table to stderr, among the bars and without
    the cell's name, and a sweep's stdout held only each cell's first and last line.)"""
    def show(summary: dict) -> None:
        for line in format_results(summary).splitlines():
            tqdm.write(f"{head}: eval step {summary['step']}: {line.strip()}", file=sys.stdout)
        sys.stdout.flush()
    return show


def prepare_cell(cell: Cell) -> None:
    """Build the cell's shared dataset and run its shared pretraining, each only if not there yet. Each resumes by
    itself; a finished pretraining (its model/ folder, which lands in one rename) is not even reopened, so cells
    after the first never touch the shared files."""
    if cell.data_dir is not None:
        build_dataset(cell.cfg.data, cell.data_dir)  # finds a complete dataset with these settings and returns
    if cell.pretrain_dir is not None and not (cell.pretrain_dir / "model").is_dir():
        print(f"  pretraining {cell.pretrain_dir.name} (shared by every cell with these data/model/pretrain "
              f"settings and seed)", flush=True)
        pretrain(cell.cfg, cell.pretrain_dir)  # records its config in pretrain_config.yaml


def run_cell(cell: Cell, progress: bool = True, head: str | None = None) -> dict:
    """prepare_cell, then run (or resume) the cell's RL, printing its evaluations as they come (eval_printer, lines
    prefixed with `head`, default the cell's name)."""
    prepare_cell(cell)
    return run_rl(cell.cfg, cell.out / "rl", progress=progress, on_eval=eval_printer(head or cell.name))


def run_sweep(config: str, grid_specs: list[str], overrides: list[str], out: str | Path,
              progress: bool = True) -> list[dict]:
    """Run every unfinished cell; write DIR/sweep.json after each and DIR/report.html at the end.
    Raises SweepError (before anything runs) for a bad grid or config; a cell that fails is recorded as
    "failed" with its error and the sweep goes on to the next. progress: RL's progress bars."""
    out = Path(out)
    cells = resolve_cells(config, grid_specs, overrides, out)
    try:
        with exclusive(out):  # two sweeps writing one folder would corrupt it
            return _run_cells(cells, out, progress)
    except RunFolderError as e:  # (a cell's own errors are recorded in sweep.json, not raised)
        raise SweepError(f"another process (a sweep?) is writing {out}: {e}") from None


def run_pretraining(config: str, grid_specs: list[str], overrides: list[str], out: str | Path) -> list[Cell]:
    """A sweep stopped before RL: every cell's dataset and pretraining (prepare_cell; a shared one once), one after
    another, resuming as run_sweep does; returns the cells. A pretraining that fails is reported, its traceback
    left in the cell's error.log, and the others go on. A pretraining pilot (studies.py) reads the cells'
    validation losses from their pretrained/<key>/metrics.jsonl."""
    out = Path(out)
    cells = resolve_cells(config, grid_specs, overrides, out)
    try:
        with exclusive(out):
            for i, cell in enumerate(cells):
                head = f"[cell {i + 1}/{len(cells)}] {cell.name}"
                if cell.pretrain_dir is None or (cell.pretrain_dir / "model").is_dir():
                    print(f"{head}: pretrained earlier, skipped", flush=True)
                    continue
                print(f"{head}: pretraining -> {cell.pretrain_dir}", flush=True)
                record_cell(cell)
                _attempt(cell, head, lambda: prepare_cell(cell))
    except RunFolderError as e:
        raise SweepError(f"another process (a sweep?) is writing {out}: {e}") from None
    return cells


def _attempt(cell: Cell, head: str, stage: Callable[[], object]) -> tuple[object, str | None]:
    """Run one cell's stage; a failure is printed, its traceback written to the cell's error.log, and returned as
    "Type: message" instead of raised (one broken cell must not cost the others; Ctrl-C still stops)."""
    try:
        return stage(), None
    except Exception as e:  # noqa: BLE001
        atomic_write_text(cell.out / "error.log", traceback.format_exc())
        print(f"{head}: FAILED: {type(e).__name__}: {e} (traceback: {cell.out / 'error.log'})", flush=True)
        return None, f"{type(e).__name__}: {e}"


def cell_entries(cells: list[Cell], out: Path) -> list[dict]:
    """sweep.json as DIR holds it now: a cell is done (rl/summary.json), failed (an error.log and no summary),
    running (its folder exists) or pending."""
    entries = []
    for cell in cells:
        summary_path = cell.out / "rl" / "summary.json"
        if summary_path.exists():
            entries.append(_entry(cell, out, "done", json.loads(summary_path.read_text())))
        elif (cell.out / "error.log").exists():
            error = (cell.out / "error.log").read_text().strip().splitlines() or ["unknown"]
            entries.append(_entry(cell, out, "failed", error=error[-1]))
        else:
            entries.append(_entry(cell, out, "running" if cell.out.exists() else "pending"))
    return entries


def record_cell(cell: Cell) -> None:
    """DIR/cells/<name>/cell.json: the cell's name, grid values and requested config, before it runs."""
    atomic_write_json(cell.out / "cell.json", {"name": cell.name, "values": cell.values, "config": cell.requested})


def write_results(cells: list[Cell], out: Path) -> list[dict]:
    """sweep.json and report.html from what the cells' folders hold (a cluster sweep's last job); the entries."""
    entries = cell_entries(cells, out)
    atomic_write_json(out / "sweep.json", entries)
    report = write_sweep_report(out, entries, group_over_seeds(entries))
    done = sum(e["status"] == "done" for e in entries)
    print(f"sweep: {done}/{len(entries)} cells done; {out / 'sweep.json'}; report: {report}", flush=True)
    return entries


def _run_cells(cells: list[Cell], out: Path, progress: bool) -> list[dict]:
    # A cell that failed before is run again: it starts as running, as any other unfinished cell with a folder.
    entries = [e if e["status"] != "failed" else {**{k: v for k, v in e.items() if k != "error"}, "status": "running"}
               for e in cell_entries(cells, out)]
    atomic_write_json(out / "sweep.json", entries)
    n, t0 = len(cells), time.perf_counter()
    for i, cell in enumerate(cells):
        head = f"[cell {i + 1}/{n}] {cell.name}"
        if entries[i]["status"] == "done":
            print(f"{head}: finished earlier, skipped ({_result_line(entries[i])})", flush=True)
            continue
        print(f"{head}: {'resuming' if entries[i]['status'] == 'running' else 'running'} -> {cell.out}",
              flush=True)
        record_cell(cell)
        entries[i]["status"] = "running"
        atomic_write_json(out / "sweep.json", entries)
        summary, error = _attempt(cell, head, lambda: run_cell(cell, progress, head))
        if error is None:
            entries[i] = _entry(cell, out, "done", summary)
            print(f"{head}: {_result_line(summary)}", flush=True)
        else:
            entries[i] = _entry(cell, out, "failed", error=error)
        atomic_write_json(out / "sweep.json", entries)
    report = write_sweep_report(out, entries, group_over_seeds(entries))
    failed = sum(e["status"] == "failed" for e in entries)
    print(f"sweep: {n - failed}/{n} cells done ({time.perf_counter() - t0:.0f} s this run); "
          f"{out / 'sweep.json'}; report: {report}", flush=True)
    return entries


# ------------------------------------------------------------------------------------------------- dry run
def dry_run(config: str, grid_specs: list[str], overrides: list[str], out: str | Path, title: str = "sweep") -> str:
    """What a sweep (or a study) would do in OUT, read without writing anything: every cell's name and overrides,
    the pretrained model it shares and with which cells, what OUT already holds (dataset built; pretraining
    finished (model/) or its last checkpoint's step; the cell's RL finished (rl/summary.json) or its last
    checkpoint's step), and the wall time still to run per cell and in total (CellTiming says where each figure
    comes from; a shared pretraining counts once). A bad grid or config raises SweepError, as run_sweep does."""
    out = Path(out)
    cells = resolve_cells(config, grid_specs, overrides, out)
    timing = CellTiming(cells, out)
    lines = [f"{title}: dry run of {_count(len(cells), 'cell')} in {out} (config {config}"
             + "".join(f" --grid {g}" for g in grid_specs) + "".join(f" {o}" for o in overrides) + ")"]
    left = {"pretraining": 0.0, "RL": 0.0}
    unknown, counted = [], set()
    for i, cell in enumerate(cells):
        rows = [("overrides", ", ".join(f"{k}={_show(v)}" for k, v in cell.overrides().items()) or "none"),
                *_stage_rows(cell, cells, out)]
        cell_left, parts = 0.0, []
        for stage, (seconds, how) in (("pretraining", _pretrain_left(cell, timing, counted)),
                                      ("RL", _rl_left(cell, timing))):
            if seconds is None:
                unknown.append(f"{cell.name} {stage}")
            left[stage] += seconds or 0.0
            cell_left += seconds or 0.0
            parts.append(f"{stage} {how}")
        rows.append(("time left", f"{_minutes(cell_left)}: " + "; ".join(parts)))
        lines += [f"[cell {i + 1}/{len(cells)}] {cell.name}", *(f"  {k:<11} {v}" for k, v in rows)]
    lines.append(f"time left in all: {_minutes(sum(left.values()))} = pretraining {_minutes(left['pretraining'])} "
                 f"(each shared model once) + RL {_minutes(left['RL'])}"
                 + (f"; not estimated: {', '.join(unknown)}" if unknown else ""))
    if timing.watch.notes:
        lines.append(f"timed now on this machine ({timing.watch.machine}; other jobs running now slow these down):")
        lines += [f"  {note}" for note in timing.watch.notes]
    lines.append("RL times timed now are upper bounds ('at most'): every response is counted at max_new_tokens, "
                 "but responses stop at EOS. Training steps are timed eager: on a CPU a pretraining of at least "
                 f"{COMPILE_MIN_STEPS} steps compiles its step (pretrain.compile auto) and runs about a third faster "
                 "after some 30 s of compiling. Not counted: dataset builds and the sandbox's grading. Nothing was "
                 "written.")
    return "\n".join(lines)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _records(run: Path) -> list[dict]:
    return read_metrics(run) if (run / "metrics.jsonl").exists() else []


def _checkpoint_step(run: Path) -> int:
    """The step of a run folder's last complete checkpoint; 0 when it has none."""
    return latest_step(run / "checkpoints")


def _progress(run: Path, finished: str, total: int | None) -> str:
    """'finished (FILE)' when run/FILE is there, else how far its checkpoints got."""
    if (run / finished).exists():
        return f"finished ({finished})"
    step = _checkpoint_step(run)
    return f"stopped after step {step} of {total or '?'} (checkpoints/latest.json)" if step else "not started"


def _pretrain_steps(cfg: RunConfig) -> int | None:
    """Optimizer steps of a cell's pretraining; None for one epoch (max_steps 0) over a dataset not built yet."""
    manifest = Path(cfg.pretrain.data_dir) / "manifest.json"
    if cfg.pretrain.max_steps or not manifest.exists():
        return cfg.pretrain.max_steps or None
    return resolve_pretrain_steps(cfg.pretrain, json.loads(manifest.read_text())["splits"]["train"]["sequences"], 1)


def _rl_steps(cfg: RunConfig) -> int:
    return cfg.rl.ei.rounds if cfg.rl.algo == "ei" else cfg.rl.steps


def _stage_rows(cell: Cell, cells: list[Cell], out: Path) -> list[tuple[str, str]]:
    """The dataset, pretrained model and RL lines of a cell: where each lives and how far it got."""
    if cell.pretrain_dir is None:
        data, pre = "none", f"rl.init given: no pretraining (starts from {cell.cfg.rl.init})"
    else:
        data_dir = Path(cell.cfg.pretrain.data_dir)
        data = (str(data_dir.relative_to(out)) if cell.data_dir else f"pretrain.data_dir {data_dir}") + \
            (": built" if (data_dir / "manifest.json").exists() else ": to build")
        sharing = [c.name for c in cells if c.pretrain_dir == cell.pretrain_dir and c is not cell]
        pre = (f"{cell.pretrain_dir.relative_to(out)}: "
               + _progress(cell.pretrain_dir, "model/", _pretrain_steps(cell.cfg))
               + (f"; shared with {', '.join(sharing)}" if sharing else "; used by this cell only"))
    summary = cell.out / "rl" / "summary.json"
    rl = f"{cell.out.relative_to(out)}/rl: " + _progress(cell.out / "rl", "summary.json", _rl_steps(cell.cfg))
    if summary.exists():
        rl += f" ({_result_line(json.loads(summary.read_text()))})"
    return [("dataset", data), ("pretrained", pre), ("RL", rl)]


def _pretrain_left(cell: Cell, timing: "CellTiming", counted: set[Path]) -> tuple[float | None, str]:
    """Seconds of pretraining still to run for this cell (0 when a cell before it runs the shared model), with how
    that figure was made."""
    if cell.pretrain_dir is None:
        return 0.0, "none (rl.init given)"
    if (cell.pretrain_dir / "model").is_dir():
        return 0.0, "0 (finished)"
    if cell.pretrain_dir in counted:
        return 0.0, "0 here (the shared model is counted at the first cell that uses it)"
    counted.add(cell.pretrain_dir)
    total = _pretrain_steps(cell.cfg)
    step_s, how = timing.pretrain_step(cell)
    if total is None or step_s is None:
        return None, "unknown (" + ("one epoch of a dataset not built yet" if total is None else how) + ")"
    steps = total - _checkpoint_step(cell.pretrain_dir)
    return steps * step_s, f"{_minutes(steps * step_s)} ({_count(steps, 'step')} x {step_s:.3g} s, {how})"


def _rl_left(cell: Cell, timing: "CellTiming") -> tuple[float | None, str]:
    """Seconds of the cell's RL still to run (steps left x a step + the evaluations still to come), with how."""
    if (cell.out / "rl" / "summary.json").exists():
        return 0.0, "0 (finished)"
    done = _checkpoint_step(cell.out / "rl")
    step_s, evaluation, how, bound = timing.rl(cell)
    r, e = cell.cfg.rl, cell.cfg.eval
    total = _rl_steps(cell.cfg)
    evals = [s for s in rl_eval_steps(r) if s > done or s == done == 0]
    sizes = [e.n_problems_between if 0 < s < total and e.n_problems_between else e.n_problems for s in evals]
    eval_s = [evaluation(n) for n in sizes]
    if step_s is None or None in eval_s:
        return None, f"unknown ({how})"
    seconds = (total - done) * step_s + sum(eval_s)
    return seconds, (f"{'at most ' * bound}{_minutes(seconds)} ({_count(total - done, 'step')} x {step_s:.3g} s + "
                     f"{_count(len(evals), 'evaluation')}, {_minutes(sum(eval_s))} in all; {how})")


def _without_seeds(settings: dict) -> str:
    """The key of settings with every seed left out: cells that differ only in seeds run equally fast."""
    return _key({k: v for k, v in flatten(settings).items() if not is_seed_key(k)})


class CellTiming:
    """Seconds per pretraining step, per RL step and per evaluation of a sweep's cells. Recorded in OUT by a cell
    with the same settings except seeds where there is one (pretraining: metrics.jsonl's tokens_per_s; RL:
    metrics.jsonl's time/* per step, and a finished cell's summary.json wall_seconds less its steps for each
    evaluation), else timed now on this machine (plan.Stopwatch; formulas in plan.rl_seconds), each shape once."""

    def __init__(self, cells: list[Cell], out: Path):
        self.cells, self.out = cells, out
        self.watch = Stopwatch(cells[0].cfg.device if cells else "auto")
        self._rl: dict[str, RLSeconds] = {}

    def _same(self, cell: Cell, sections: tuple[str, ...] | None = None) -> list[Cell]:
        def part(c: Cell) -> dict:
            return {s: c.requested[s] for s in sections} if sections else c.requested
        return [c for c in self.cells if _without_seeds(part(c)) == _without_seeds(part(cell))]

    def pretrain_step(self, cell: Cell) -> tuple[float | None, str]:
        for run in dict.fromkeys(c.pretrain_dir for c in self._same(cell, ("data", "model", "pretrain"))
                                 if c.pretrain_dir):
            recs = [r for r in _records(run) if r.get("tokens_per_s")]
            if recs:  # tokens / step is the global batch in tokens
                step_s = float(np.median([r["tokens"] / r["step"] / r["tokens_per_s"] for r in recs]))
                return step_s, f"recorded in {run.relative_to(self.out)}/metrics.jsonl"
        p = cell.cfg.pretrain
        try:
            accum = resolve_grad_accum(p.batch_size, p.grad_accum, p.global_batch, 1)
        except ValueError as e:
            return None, f"not on one process: {e}"
        step_s = self.watch.train_step(run_model_config(cell.cfg), p.batch_size, cell.cfg.data.seq_len, p.autocast)
        return (None, "too large to time here") if step_s is None else (step_s * accum, "timed now")

    def rl(self, cell: Cell) -> tuple[float | None, Callable[[int], float | None], str, bool]:
        """(seconds per RL step, seconds of an evaluation of n problems per dataset, where they come from, whether
        some are upper bounds timed now)."""
        same = self._same(cell)
        steps = {c.name: [sum(r.get(f"time/{k}", 0.0) for k in ("generation", "reward", "advantages", "update"))
                          for r in _records(c.out / "rl")] for c in same}
        recorded = [(c, steps[c.name]) for c in same if steps[c.name]]
        finished = [(c, s) for c, s in recorded if (c.out / "rl" / "summary.json").exists()]
        step_s = float(np.mean([t for _, s in recorded for t in s])) if recorded else None
        if finished:
            c, s = finished[0]
            wall = json.loads((c.out / "rl" / "summary.json").read_text())["wall_seconds"]
            per_eval = max(0.0, wall - sum(s)) / max(1, len(list((c.out / "rl" / "eval").glob("step_*.json"))))
            return step_s, lambda n: per_eval, f"recorded in {c.out.relative_to(self.out)}/rl", False
        model = self._model(cell)
        if model is None:
            return None, lambda n: None, f"rl.init {cell.cfg.rl.init} holds no model_config.json", False
        key = _key(dataclasses.astuple(model), _without_seeds(cell.requested))
        if key not in self._rl:  # (the Stopwatch times each shape once; this also reads the prompts once)
            self._rl[key] = rl_seconds(cell.cfg, model, self.watch)
        bound = self._rl[key]
        if recorded:
            return step_s, bound.evaluation.get, (f"steps recorded in {recorded[0][0].out.relative_to(self.out)}"
                                                  f"/rl/metrics.jsonl, evaluations timed now"), True
        return bound.step, bound.evaluation.get, "timed now", True

    @staticmethod
    def _model(cell: Cell) -> ModelConfig | None:
        """The model the cell's RL trains: its pretraining's, or with rl.init the one in that folder."""
        if cell.pretrain_dir is not None:
            return run_model_config(cell.cfg)
        path = Path(cell.cfg.rl.init) / "model_config.json"
        return config_from_dict(json.loads(path.read_text()), str(path)) if path.exists() else None
