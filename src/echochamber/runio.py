"""Run folders: atomic writes, append-only JSONL logs, and the metadata that makes a run reproducible.

Every file a person or a resumed run reads back (checkpoints, manifests, results, summaries) is written to a
temporary file in the same folder and renamed over the target, so a crash leaves either the old file or the
new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        # Only the temporary file this call created is removed.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line. A crash can leave a torn last line; `read_jsonl` skips only that one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write a whole JSONL file atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> list[dict]:
    """Read a JSONL file; a malformed line is an error naming file and line (except a torn final line of a log)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines):
                break
            raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A stage's per-step log, RUN/metrics.jsonl (pretraining and RL write the same way)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl", tolerate_torn_tail=True)


def truncate_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a log keeping only the records `keep` accepts (a resumed run drops what came after its checkpoint)."""
    path = Path(path)
    if path.exists():
        write_jsonl(path, [r for r in read_jsonl(path, tolerate_torn_tail=True) if keep(r)])


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    """{"rl": {"lr": 1}} -> {"rl.lr": 1}: nested config mappings as dotted keys (for diffs and tables)."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the echochamber checkout this code runs from (with '+dirty' when it has changes), or None."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


KEY_PACKAGES = ("echochamber", "torch", "tokenizers", "safetensors", "numpy", "math-verify", "transformers")
LOCK_FILE = Path(__file__).resolve().parents[2] / "constraints.txt"  # the checkout's lock (absent in a wheel install)


def installed_packages() -> dict[str, str]:
    """Every installed distribution, {normalised name: version}: what a run's numbers may depend on."""
    from importlib import metadata

    return dict(sorted((_normalise(d.metadata["Name"]), d.version) for d in metadata.distributions()
                       if d.metadata["Name"]))


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them: NumPy, math_verify -> numpy, math-verify."""
    return re.sub(r"[-_.]+", "-", name).lower()


def versions(packages: dict[str, str] | None = None) -> dict[str, str]:
    """Python, the platform and the versions of the packages the numbers depend on most (distribution metadata,
    so a module without __version__, e.g. math_verify, is still named)."""
    packages = installed_packages() if packages is None else packages
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{name: packages[name] for name in KEY_PACKAGES if name in packages}}


def lock_differences(packages: dict[str, str], lock_file: Path = LOCK_FILE) -> list[str] | None:
    """Where the installed packages differ from the lock file that install.sh installs (constraints.txt:
    name==version lines): ["numpy 2.4.6, lock 2.4.5", "regex not installed, lock 2026.11.24", ...]; [] when they
    agree; None when there is no lock file (an install from a wheel). Local labels (2.13.0+cpu) are ignored."""
    if not lock_file.exists():
        return None
    out = []
    for line in lock_file.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        name, _, want = (part.strip() for part in line.partition("=="))
        have = packages.get(_normalise(name))
        if have is None:
            out.append(f"{name} not installed, lock {want}")
        elif have.split("+")[0] != want.split("+")[0]:
            out.append(f"{name} {have}, lock {want}")
    return out


def machine() -> dict:
    """What decides which kernels run, and so the rounding: the CPU model, the instruction sets torch and oneDNN
    can use (bf16 matmuls on a CPU with AMX or AVX512_BF16 round differently from one without), the torch
    threads and the thread settings of the environment."""
    import torch

    cpu, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu is None:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux
        cpu = platform.processor() or None
    isa = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": [f for f in isa if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(),
            "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "ECHOCHAMBER_JOBS", "ECHOCHAMBER_THREADS",
                                                      "OMP_WAIT_POLICY") if k in os.environ}}


def write_run_metadata(run_dir: str | Path, config: Any, stage: str) -> dict:
    """Record what reproduces this stage: the resolved config, the git commit and command line, every installed
    package's version (and where they differ from the lock file), the CPU's kernels and the thread count."""
    run_dir = Path(run_dir)
    meta = {
        "stage": stage,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "versions": versions(packages := installed_packages()),
        "lock_differences": lock_differences(packages),
        "machine": machine(),
        "packages": packages,
        "config": to_dict(config),
    }
    atomic_write_json(run_dir / f"{stage}_run.json", meta)
    atomic_write_text(run_dir / f"{stage}_config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    return meta
