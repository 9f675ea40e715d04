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

Rerunning the same command skips finished cells (those with rl/summary.json) and resumes the others from their
checkpoints: every stage resumes by itself. A cell folder whose recorded config differs from the one asked for
now is an error, not a silent mix of two experiments.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, RunConfig, load_run_config, to_dict
from .data import build_dataset
from .pretrain import pretrain
from .report import write_sweep_report
from .rl.train import run_rl
from .runio import atomic_write_json, atomic_write_text, flatten
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

    def overrides(self) -> dict:
        """The grid values as the config parsed them (rl.lr=1e-4 -> 0.0001), by the names of `named`; a linked key
        "a+b" with one value for both by its first key."""
        def get(key):
            node = self.cfg
            for part in key.split("+")[0].split("."):
                node = getattr(node, part)
            return to_dict(node)
        return {k: get(k) for k, _ in named(self.values)}


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


def run_cell(cell: Cell, progress: bool = True) -> dict:
    """Build the shared dataset and pretraining if not there yet, then run (or resume) the cell's RL.
    Each stage resumes by itself; a finished pretraining (its model/ folder, which lands in one rename) is not
    even reopened, so cells after the first never touch the shared files."""
    if cell.data_dir is not None:
        build_dataset(cell.cfg.data, cell.data_dir)  # finds a complete dataset with these settings and returns
    if cell.pretrain_dir is not None and not (cell.pretrain_dir / "model").is_dir():
        print(f"  pretraining {cell.pretrain_dir.name} (shared by every cell with these data/model/pretrain "
              f"settings and seed)", flush=True)
        pretrain(cell.cfg, cell.pretrain_dir)  # records its config in pretrain_config.yaml
    return run_rl(cell.cfg, cell.out / "rl", progress=progress)


def run_sweep(config: str, grid_specs: list[str], overrides: list[str], out: str | Path,
              progress: bool = True) -> list[dict]:
    """Run every unfinished cell; write DIR/sweep.json after each and DIR/report.html at the end.
    Raises SweepError (before anything runs) for a bad grid or config; a cell that fails is recorded as
    "failed" with its error and the sweep goes on to the next. progress: RL's progress bars."""
    out = Path(out)
    try:
        grid = parse_grid(grid_specs)
    except SweepError as e:  # with the shared overrides' problems too: every mistake in one go
        raise SweepError("\n".join([str(e), *_config_errors(config, overrides, "config")])) from None
    cells = plan_cells(config, grid, overrides, out)
    try:
        with exclusive(out):  # two sweeps writing one folder would corrupt it
            return _run_cells(cells, out, progress)
    except RunFolderError as e:  # (a cell's own errors are recorded in sweep.json, not raised)
        raise SweepError(f"another process (a sweep?) is writing {out}: {e}") from None


def _run_cells(cells: list[Cell], out: Path, progress: bool) -> list[dict]:
    entries = []
    for cell in cells:
        summary_path = cell.out / "rl" / "summary.json"
        done = summary_path.exists()
        entries.append(_entry(cell, out, "done", json.loads(summary_path.read_text())) if done
                       else _entry(cell, out, "running" if cell.out.exists() else "pending"))
    atomic_write_json(out / "sweep.json", entries)
    n, t0 = len(cells), time.perf_counter()
    for i, cell in enumerate(cells):
        head = f"[cell {i + 1}/{n}] {cell.name}"
        if entries[i]["status"] == "done":
            print(f"{head}: finished earlier, skipped ({_result_line(entries[i])})", flush=True)
            continue
        print(f"{head}: {'resuming' if entries[i]['status'] == 'running' else 'running'} -> {cell.out}",
              flush=True)
        atomic_write_json(cell.out / "cell.json", {"name": cell.name, "values": cell.values,
                                                   "config": cell.requested})
        entries[i]["status"] = "running"
        atomic_write_json(out / "sweep.json", entries)
        try:
            summary = run_cell(cell, progress)
            entries[i] = _entry(cell, out, "done", summary)
            print(f"{head}: {_result_line(summary)}", flush=True)
        except Exception as e:  # noqa: BLE001 - one broken cell must not cost the others; Ctrl-C still stops
            entries[i] = _entry(cell, out, "failed", error=f"{type(e).__name__}: {e}")
            atomic_write_text(cell.out / "error.log", traceback.format_exc())
            print(f"{head}: FAILED: {type(e).__name__}: {e} (traceback: {cell.out / 'error.log'})", flush=True)
        atomic_write_json(out / "sweep.json", entries)
    report = write_sweep_report(out, entries, group_over_seeds(entries))
    failed = sum(e["status"] == "failed" for e in entries)
    print(f"sweep: {n - failed}/{n} cells done ({time.perf_counter() - t0:.0f} s this run); "
          f"{out / 'sweep.json'}; report: {report}", flush=True)
    return entries
