"""Sweeps and studies as cluster jobs, through submitit: `echochamber sweep ... --launcher slurm` (or `local`).

    echochamber sweep --config paper_150m --grid rl.algo=ppo,reinforce_baseline,grpo --grid rl.kl_coef=0,0.001 \\
        --out runs/sweep150m --launcher slurm --partition gpu --nodes 1 --gpus-per-node 8 --time 2880 --account ml

The cells are sweep.py's (same grid, same folders, same sharing), run as jobs instead of one after another:

    data job          one per packed dataset the cells need and DIR does not hold yet (build_dataset; no GPU)
    pretraining job   one per distinct pretrained model (sweep.pretrain_key) not finished yet, after its data job
    RL job            one per unfinished cell, after the pretraining job of the model it starts from
    report job        after every RL job, finished or failed: DIR/sweep.json and DIR/report.html (and a study's)

A pretraining or RL job runs torchrun on each of its nodes (one process per GPU; --nodes N > 1 rendezvous at the
first node), `python -m echochamber.launcher STAGE CONFIG.yaml RUN_DIR` on every process, with the cell's resolved
config written to DIR/launcher/configs/. A stage resumes from its checkpoints, as it does on one machine, so a
rerun of the same command after a failure, a timeout or a preemption submits what is left and continues it.

slurm: every job is submitted at once, each later one with `--dependency=afterok:` on the jobs it waits for
(the report job: afterany), and the command returns after printing the job ids; the logs are in
DIR/launcher/logs/ (submitit's %j_0_log.out / .err). local (submitit's LocalExecutor, one machine): the jobs run one
after another, each in its own process (with torchrun over the GPUs of --gpus-per-node when there are more than
one), and the command waits for them. Without --launcher a sweep runs in its own process exactly as before.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import yaml

from .config import load_run_config, to_dict
from .data import build_dataset
from .runio import atomic_write_text
from .sweep import Cell, eval_printer, record_cell, resolve_cells, write_results

LAUNCHERS = ("local", "slurm")
MASTER_PORT = 29500  # torchrun's rendezvous port on a job's first node (plus the job id modulo PORT_SPAN)
PORT_SPAN = 2000


@dataclass
class LaunchOptions:
    """Where and how big each job is (the command line's --launcher, --partition, --nodes, ...)."""
    kind: Literal["local", "slurm"] = "local"
    partition: str | None = None  # slurm partition
    account: str | None = None  # slurm account
    nodes: int = 1  # nodes per pretraining or RL job (slurm; local runs on one)
    gpus_per_node: int = 0  # GPUs (= torchrun processes) per node; 0 = no GPU, one process
    time_min: int = 24 * 60  # wall-clock limit of each job, minutes
    cpus_per_node: int | None = None  # slurm --cpus-per-task of the one task per node (data building, sandbox)
    setup: list[str] = field(default_factory=list)  # shell lines each job runs first (module load, source .venv/...)

    def __post_init__(self):
        if self.kind not in LAUNCHERS:
            raise ValueError(f"--launcher {self.kind!r}: expected one of {', '.join(LAUNCHERS)}")
        if self.nodes < 1 or self.gpus_per_node < 0 or self.time_min < 1:
            raise ValueError(f"--nodes ({self.nodes}) and --time ({self.time_min}) must be >= 1, --gpus-per-node "
                             f"({self.gpus_per_node}) >= 0")
        if self.kind == "local" and self.nodes > 1:
            raise ValueError("--launcher local runs on this one machine: --nodes must be 1")

    @property
    def processes_per_node(self) -> int:
        return max(1, self.gpus_per_node)


# ------------------------------------------------------------------------------------------------- in the jobs
def stage_main(argv: list[str]) -> None:
    """`python -m echochamber.launcher STAGE CONFIG.yaml RUN_DIR [NAME]`: one process of a pretraining or RL job
    (every process of the torchrun runs this)."""
    from .pretrain import pretrain
    from .rl.train import run_rl

    stage, config, run_dir, *name = argv
    cfg = load_run_config(config)
    if stage == "pretrain":
        pretrain(cfg, Path(run_dir))
    elif stage == "rl":
        run_rl(cfg, Path(run_dir), on_eval=eval_printer(name[0] if name else Path(run_dir).parent.name))
    else:
        raise ValueError(f"unknown stage {stage!r}: expected pretrain or rl")


def stage_command(stage: str, config: Path, run_dir: Path, name: str, nodes: int, per_node: int,
                  node_rank: int = 0, master: str = "localhost", port: int = MASTER_PORT) -> list[str]:
    """The command one node of a job runs: torchrun over the node's processes (static rendezvous at the first
    node), or plain python for a job of one process."""
    worker = ["-m", "echochamber.launcher", stage, str(config), str(run_dir), name]
    if nodes * per_node == 1:
        return [sys.executable, *worker]
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={per_node}",
            f"--node_rank={node_rank}", f"--master_addr={master}", f"--master_port={port}", *worker]


def run_stage(stage: str, config: Path, run_dir: Path, name: str, nodes: int, per_node: int,
              error_log: Path | None = None) -> None:
    """The body of a pretraining or RL job, on each of its nodes (submitit starts one task per node): the stage
    in this process for a job of one process, else torchrun. A failure's traceback also goes to error_log (the
    cell's error.log, which the report reads)."""
    import submitit

    env = submitit.JobEnvironment()
    try:
        if nodes * per_node == 1:
            stage_main([stage, str(config), str(run_dir), name])
            return
        port = MASTER_PORT + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % PORT_SPAN
        command = stage_command(stage, config, run_dir, name, nodes, per_node, env.global_rank, env.hostnames[0],
                                port)
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
    except Exception:
        if error_log is not None and env.global_rank == 0:
            atomic_write_text(error_log, traceback.format_exc())
        raise


def data_job(config: Path, data_dir: Path) -> None:
    build_dataset(load_run_config(config).data, data_dir)


def report_job(cells: list[Cell], out: Path, finish: Callable[[list[dict]], None] | None) -> list[dict]:
    """The last job: sweep.json and the report from what the cells' folders hold (and a study's report); the
    cells are the ones launch_sweep resolved (they pickle with the job)."""
    entries = write_results(cells, out)
    if finish is not None:
        finish(entries)
    return entries


# ------------------------------------------------------------------------------------------------- submitting
class JobFailed(RuntimeError):
    """Local: a job ended with an error; the jobs that wait for it are not started."""


@dataclass
class Job:
    """One submitted job: its kind and name for the output, submitit's job, what it waits for."""
    kind: str
    name: str
    job: object
    after: list["Job"]


class Submitter:
    """Submits jobs on one launcher. Slurm: at once, each with afterok dependencies on the jobs it waits for.
    Local: one at a time, each waiting for the one before (the jobs it waits for are done by then)."""

    def __init__(self, options: LaunchOptions, folder: Path):
        self.options, self.folder = options, folder

    def executor(self, gpus: bool, dependency: str | None, name: str):
        import submitit

        o = self.options
        if o.kind == "local":
            ex = submitit.LocalExecutor(folder=self.folder / "logs")
            ex.update_parameters(timeout_min=o.time_min, tasks_per_node=1, gpus_per_node=o.gpus_per_node if gpus
                                 else 0, setup=o.setup)
            return ex
        ex = submitit.SlurmExecutor(folder=self.folder / "logs")
        params = dict(job_name=f"echochamber-{name}", time=o.time_min, nodes=o.nodes if gpus else 1,
                      ntasks_per_node=1, partition=o.partition, account=o.account, dependency=dependency,
                      cpus_per_task=o.cpus_per_node, setup=o.setup,
                      gpus_per_node=o.gpus_per_node if gpus and o.gpus_per_node else None)
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def submit(self, kind: str, name: str, fn: Callable, *args, gpus: bool = False, after: list[Job] = (),
               any_outcome: bool = False) -> Job:
        """Submit fn(*args); `after`: the jobs it waits for (afterok; any_outcome: afterany). Local: returns once it
        ended, raising JobFailed when it failed."""
        after = [j for j in after if j is not None]
        dependency = None
        if after and self.options.kind == "slurm":  # (local: what it waits for has ended already)
            dependency = f"{'afterany' if any_outcome else 'afterok'}:" + ":".join(j.job.job_id for j in after)
        job = self.executor(gpus, dependency, name).submit(fn, *args)
        if self.options.kind == "local":  # one at a time
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error here
                last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                raise JobFailed(f"{kind} job {name} failed: {last} (logs: {self.folder / 'logs'})") from e
        return Job(kind, name, job, after)


def launch_sweep(config: str, grid: list[str], overrides: list[str], out: str | Path, options: LaunchOptions,
                 finish: Callable[[list[dict]], None] | None = None) -> list[dict] | None:
    """Submit the sweep's jobs (see the module docstring). Local: waits for them and returns sweep.json's entries;
    slurm: returns None once every job is submitted. `finish(entries)` runs after the report (a study's report)."""
    out = Path(out)
    cells = resolve_cells(config, grid, overrides, out)  # a bad grid or config: SweepError before any job
    folder = out / "launcher"
    sub = Submitter(options, folder)
    submitted: dict[Path, Job | JobFailed | None] = {}  # a data or pretraining folder -> its job (None: done)

    def config_file(cell: Cell, what: str) -> Path:
        path = folder / "configs" / f"{what}.yaml"
        atomic_write_text(path, yaml.safe_dump(to_dict(cell.cfg), sort_keys=False))
        return path

    def submit(kind: str, name: str, fn, *args, **kw) -> Job:
        job = sub.submit(kind, name, fn, *args, **kw)
        print(f"{kind} job {job.job.job_id}: {name}" + (" done" if options.kind == "local" else " submitted"),
              flush=True)
        return job

    def once(folder_: Path | None, done: bool, make: Callable[[], Job]) -> Job | None:
        """The job that makes a shared folder: submitted by the first cell that needs it, None when it is done."""
        if folder_ is None:
            return None
        if folder_ not in submitted:
            try:
                submitted[folder_] = None if done else make()
            except JobFailed as e:
                submitted[folder_] = e
        if isinstance(submitted[folder_], JobFailed):
            raise submitted[folder_]
        return submitted[folder_]

    rl_jobs = []
    for i, cell in enumerate(cells):
        head = f"[cell {i + 1}/{len(cells)}] {cell.name}"
        if (cell.out / "rl" / "summary.json").exists():
            print(f"{head}: finished earlier, skipped", flush=True)
            continue
        record_cell(cell)
        (cell.out / "error.log").unlink(missing_ok=True)  # an earlier attempt's: this one is about to run
        try:
            data = once(cell.data_dir, cell.data_dir is not None and (cell.data_dir / "manifest.json").exists(),
                        lambda: submit("data", cell.data_dir.name, data_job,
                                       config_file(cell, f"data_{cell.data_dir.name}"), cell.data_dir))
            pre = once(cell.pretrain_dir, cell.pretrain_dir is not None and (cell.pretrain_dir / "model").is_dir(),
                       lambda: submit("pretraining", cell.pretrain_dir.name, run_stage, "pretrain",
                                      config_file(cell, f"pretrain_{cell.pretrain_dir.name}"), cell.pretrain_dir,
                                      cell.pretrain_dir.name, options.nodes, options.processes_per_node,
                                      gpus=True, after=[data]))
            rl_jobs.append(submit("RL", cell.name, run_stage, "rl", config_file(cell, f"cell_{cell.name}"),
                                  cell.out / "rl", cell.name, options.nodes, options.processes_per_node,
                                  cell.out / "error.log", gpus=True, after=[pre]))
        except JobFailed as e:
            atomic_write_text(cell.out / "error.log", f"{e}\n")
            print(f"{head}: FAILED: {e}", flush=True)
    if options.kind == "local":
        return report_job(cells, out, finish)
    report = sub.submit("report", "report", report_job, cells, out, finish, after=rl_jobs,
                        any_outcome=True)
    print(f"report job {report.job.job_id}: {out / 'sweep.json'} and {out / 'report.html'} once the cells end; "
          f"logs: {folder / 'logs'}; rerun this command to submit what is left after a failure", flush=True)
    return None


def main(argv: list[str]) -> None:
    try:
        stage_main(argv)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
