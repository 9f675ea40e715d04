"""Typed configuration: dataclasses loaded from YAML, overridden by dotted `key=value` arguments.

Every stage of the pipeline reads one `RunConfig`. Each section's dataclass lives beside the code it configures
(ModelConfig in model.py, DataConfig in data.py, ...) and is composed here. Unknown keys and values of the wrong
type are errors that name the key and the file they came from, so a typo never silently falls back to a default.

    cfg = load_config("configs/quickstart.yaml", ["rl.kl_coef=0.01", "pretrain.max_steps=200"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .runio import to_dict  # noqa: F401  (re-exported: configs are written with it)

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override names a key that does not exist or gives a value of the wrong type."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and where lossless, convert) `value` to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(tp)):
            value = "on" if value else "off"  # YAML 1.1 reads on / off (and yes / no) as booleans
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError naming `where.key`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own value checks (__post_init__)
        raise ConfigError(f"{where}: {e}") from None


def apply_override(data: dict, cls: type, override: str) -> None:
    """Apply one `a.b.c=value` override to the raw mapping `data`; the value is parsed as YAML (`1e-3`, `[1, 2]`)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. rl.kl_coef=0.01")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(node_cls):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:i])} is not a section")
        hints = typing.get_type_hints(node_cls)
        if part not in hints:
            known = sorted(f.name for f in dataclasses.fields(node_cls))
            raise ConfigError(f"override {override!r}: unknown key {where!r}; known here: {known}")
        if i == len(parts) - 1:
            value = yaml.safe_load(raw) if raw.strip() else ""
            # YAML reads `1e-3` as a string (no dot in the mantissa); accept it where a number is expected.
            if isinstance(value, str):
                try:
                    value = float(value) if hints[part] in (float, float | None) else value
                except ValueError:
                    pass
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {where} is not a section")
            node_cls = hints[part]


def _find_config(path: str | Path, beside: Path | None = None) -> Path:
    """A config path as given, else beside the file that names it, else a built-in config by name."""
    path = Path(path)
    for cand in (path, *((beside / path, beside / f"{path}.yaml") if beside else ()), CONFIG_DIR / path,
                 CONFIG_DIR / f"{path}.yaml"):
        if cand.exists():
            return cand
    return path


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a mapping. A top-level `base: NAME` (a built-in config or a path) starts from that
    config and applies this file's keys on top (sections merge key by key; lists and values replace), so a
    study's world states only what differs from the quickstart."""
    path = _find_config(path, _seen[-1].parent if _seen else None)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (built-in configs: {builtin_configs()})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "base" not in data:
        return data
    base = data.pop("base")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `base` chain loops back to itself ({' -> '.join(str(p) for p in _seen)})")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the name or path of a config, got {base!r}")
    return _merge(load_yaml(base, (*_seen, path.resolve())), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load(cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Load dataclass `cls` from a YAML file (a path, or the name of a built-in config) plus dotted overrides."""
    data = load_yaml(path) if path else {}
    for o in overrides:
        apply_override(data, cls, o)
    return from_dict(cls, data, where=str(path) if path else "config")


# ----------------------------------------------------------------------------- the run config of every stage
# Each section's dataclass lives beside the code it configures; none of those modules imports this one, so
# imports run one way: cli -> config -> stages -> runio.
from .data import DataConfig  # noqa: E402
from .evaluate import EvalConfig  # noqa: E402
from .model import ModelConfig  # noqa: E402
from .pretrain import PretrainConfig  # noqa: E402
from .verify import VerifyConfig  # noqa: E402
from .rl.config import RLConfig  # noqa: E402
from .sandbox import SandboxConfig  # noqa: E402
from .tracking import LogConfig  # noqa: E402


@dataclass
class RunConfig:
    """One config for the whole pipeline; each stage reads its section.
    Stage outputs go to OUT_DIR/data, OUT_DIR/pretrain, OUT_DIR/rl."""

    seed: int = 0  # drives every stage: data split/shuffle, initialisation, RL sampling (unless a stage sets its own)
    out_dir: str = "runs/quickstart"  # the run folder
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a GPU when there is one (bf16 autocast), else the CPU
    memory_gb: float = 0  # memory budget per process in GB (1e9 bytes): the dry run's table and the sampler's rows
    # per call (memory.py); 0 = the device's memory (a GPU's total; a CPU: no limit; the dry run without a GPU: 80)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # where model-written code runs
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # math-verify worker processes
    log: LogConfig = field(default_factory=LogConfig)  # TensorBoard always; Weights & Biases with log.wandb

    def __post_init__(self):
        # One seed drives data, pretraining and RL unless a stage's own seed is set; the resolved values are
        # what the run records. (data.synthetic.seed is the problem world itself, the same for every seed.)
        for section in (self.data, self.pretrain, self.rl):
            if section.seed is None:
                section.seed = self.seed
        if not self.memory_gb >= 0:
            raise ValueError(f"memory_gb must be >= 0 (0 = the device's memory), got {self.memory_gb!r}")


def load_run_config(path: str | Path | None = "quickstart", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The RunConfig of a YAML file (path or built-in name) with dotted overrides applied."""
    return load(RunConfig, path, overrides)
