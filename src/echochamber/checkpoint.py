"""Checkpoints that survive a crash at any moment, and the model folders later stages start from.

    ROOT/step_000200/{model.safetensors, model_config.json, trainer_state.pt}
    ROOT/latest.json   {"step": 200, "path": "step_000200"}   points only at complete checkpoints
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .model import OLMo


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a completely written folder into place (the folder rename is atomic; replacing one is two steps)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from a crash mid-write
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(root: Path, model: OLMo, trainer_state: dict, keep: int = 2,
                    keep_step: Callable[[int], bool] | None = None) -> Path:
    """Write root/step_N/ under a temporary name, rename it into place, then point latest.json at it, then
    delete all but the newest `keep` (and those whose step `keep_step` accepts). trainer_state must hold
    "step"; the rest is the caller's."""
    root = Path(root)
    final = root / f"step_{trainer_state['step']:06d}"
    tmp = _fresh_tmp(final)
    model.save(tmp)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    _replace_dir(tmp, final)
    tmp_pointer = root / "latest.json.tmp"
    tmp_pointer.write_text(json.dumps({"step": trainer_state["step"], "path": final.name}))
    os.replace(tmp_pointer, root / "latest.json")
    for old in sorted(root.glob("step_*"))[:-keep]:
        if keep_step is None or not keep_step(int(old.name.split("_")[1])):
            shutil.rmtree(old)
    return final


def _latest(root: Path) -> dict | None:
    """latest.json: {"step": N, "path": "step_N"} of the newest complete checkpoint; None when there is none."""
    pointer = Path(root) / "latest.json"
    return json.loads(pointer.read_text()) if pointer.exists() else None


def latest_checkpoint(root: Path) -> Path | None:
    latest = _latest(root)
    return Path(root) / latest["path"] if latest else None


def latest_step(root: Path) -> int:
    """The step of the newest complete checkpoint under root; 0 when there is none."""
    latest = _latest(root)
    return int(latest["step"]) if latest else 0


def load_trainer_state(path: Path) -> dict:
    """The trainer state saved beside a checkpoint's weights, on the CPU whatever device wrote it: RNG states must
    be CPU ByteTensors (torch.set_rng_state, Generator.set_state), and Optimizer.load_state_dict moves the
    optimizer's state to its parameters' device itself."""
    return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)


def load_checkpoint(path: Path, model: OLMo, device) -> dict:
    """Load weights into `model` (on `device`) and return the trainer state saved beside them (on the CPU)."""
    model.load_state_dict(OLMo.load(path, device=device).state_dict())
    return load_trainer_state(path)


def export_model(model: OLMo, tokenizer_json: Path, out_dir: Path) -> Path:
    """A model folder (weights, model config, tokenizer.json): what `rl`, `eval` and `sample` start from."""
    out_dir = Path(out_dir)
    tmp = _fresh_tmp(out_dir)
    model.save(tmp)
    shutil.copy2(tokenizer_json, tmp / "tokenizer.json")
    _replace_dir(tmp, out_dir)
    return out_dir
