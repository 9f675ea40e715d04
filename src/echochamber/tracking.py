"""Where a run's scalars go besides metrics.jsonl: TensorBoard always (RUN/tb), and Weights & Biases when
`log.wandb` is on, as the authors' runs logged (pretraining and RL both write through one Tracker).

    echochamber rl --config paper_150m log.wandb=true log.project=echochamber log.entity=MY_TEAM

W&B needs `pip install 'echochamber[wandb]'` and an API key (`wandb login`, or WANDB_API_KEY). On compute nodes
without network set WANDB_MODE=offline: the run is written under RUN/wandb/ and `wandb sync RUN/wandb/offline-run-*`
uploads it later. The run's resolved config is sent once, when the W&B run starts; a resumed stage continues the
same W&B run (its id is kept in RUN/wandb_run_id), and W&B drops the steps it already holds (those an interrupted
attempt logged after its last checkpoint), while metrics.jsonl has them redone.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from .runio import to_dict


@dataclass
class LogConfig:
    """The `log` section: where scalars go besides metrics.jsonl and TensorBoard."""
    wandb: bool = False  # also log to Weights & Biases (the authors' runs did: --use_wandb)
    project: str = "echochamber"  # W&B project
    entity: str | None = None  # W&B team or user (None: the API key's default)
    name: str | None = None  # W&B run name; None = OUT_DIR's folder name and the stage, e.g. as_fm3_tg_omi1/rl
    group: str | None = None  # W&B group; None = OUT_DIR's folder name, so a run's pretraining and RL sit together


class Tracker:
    """Scalars of one stage (pretrain or rl) of one run; made on the process that writes the run folder."""

    def __init__(self, run_dir: Path, cfg, stage: str):
        from torch.utils.tensorboard import SummaryWriter

        lcfg: LogConfig = cfg.log
        # W&B first: when it cannot start (not installed), no TensorBoard writer is left open behind the error.
        self.wandb_run = start_wandb(run_dir, cfg, stage) if lcfg.wandb else None
        self.tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, record: dict, step: int, prefix: str) -> None:
        """Every number of `record` but its step, as PREFIX/KEY at `step` (None: nothing that step)."""
        scalars = {f"{prefix}/{k}": v for k, v in record.items() if k != "step" and v is not None}
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def start_wandb(run_dir: Path, cfg, stage: str):
    """A W&B run for this stage, its files under run_dir/wandb, the resolved config sent with it; a resumed
    stage continues the W&B run whose id run_dir/wandb_run_id holds."""
    try:
        import wandb
    except ImportError:
        raise ImportError("log.wandb: true needs the wandb package: pip install 'echochamber[wandb]' "
                          "(or set log.wandb=false)") from None
    lcfg: LogConfig = cfg.log
    run_name = Path(cfg.out_dir).name
    id_file = run_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # W&B ids: [a-z0-9]+
    id_file.write_text(run_id + "\n")
    return wandb.init(project=lcfg.project, entity=lcfg.entity, name=lcfg.name or f"{run_name}/{stage}",
                      group=lcfg.group or run_name, job_type=stage, dir=str(run_dir), id=run_id, resume="allow",
                      config=to_dict(cfg))
