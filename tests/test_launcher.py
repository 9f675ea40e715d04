"""Sweeps as cluster jobs (launcher.py): a 2-cell smoke grid end to end through submitit's local executor, and
the Slurm path without Slurm (a stand-in `sbatch` on PATH records what would be submitted): one data and one
pretraining job per distinct dataset and model, each RL cell after the pretraining it starts from, the report
after every cell, torchrun across the nodes and GPUs asked for."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from echochamber import launcher
from echochamber.cli import main
from echochamber.launcher import LaunchOptions, launch_sweep, stage_command

TINY = ["pretrain.max_steps=4", "rl.steps=1", "eval.n_problems=4", "rl.max_new_tokens=16", "eval.max_new_tokens=16",
        "data.n_problems=300", "data.tokenizer_docs=600", "device=cpu"]


def test_a_two_cell_grid_runs_end_to_end_through_the_local_launcher(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--config", "smoke", "--grid", "rl.kl_coef=0,0.001", "--out", str(out), "--launcher", "local",
            *TINY]
    main(args)
    printed = capsys.readouterr().out
    assert len(re.findall(r"^data job \d+: \w+ done$", printed, re.M)) == 1
    assert len(re.findall(r"^pretraining job \d+: \w+ done$", printed, re.M)) == 1  # shared by both cells
    assert re.findall(r"^RL job \d+: (\S+) done$", printed, re.M) == ["rl.kl_coef=0", "rl.kl_coef=0.001"]
    entries = json.loads((out / "sweep.json").read_text())
    assert [(e["name"], e["status"]) for e in entries] == [("rl.kl_coef=0", "done"), ("rl.kl_coef=0.001", "done")]
    assert entries[0]["pretrained"] == entries[1]["pretrained"] and (out / "report.html").exists()
    assert (out / entries[0]["pretrained"] / "model").is_dir()
    logs = sorted(p.name for p in (out / "launcher" / "logs").glob("*_0_log.out"))
    assert len(logs) == 4  # data, pretraining, 2 x RL: each its own process with its own log
    # The same command again: every cell finished, nothing is submitted.
    main(args)
    again = capsys.readouterr().out
    assert again.count("finished earlier, skipped") == 2 and not re.search(r"^\w+ job \d+", again, re.M)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An `sbatch` on PATH that keeps each submitted script and answers as Slurm does, with job ids 101, 102, ...,
    and an `srun` (submitit checks that there is one)."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    scripts.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"""#!/bin/sh
n=$(( $(ls {scripts} | wc -l) + 101 ))
cp "$1" {scripts}/$n.sh
echo "Submitted batch job $n"
""")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit looks for it before it submits anything; never run here
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def _flags(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script.read_text(), re.M))


def test_slurm_jobs_wait_for_the_pretraining_they_share(tmp_path, fake_sbatch, capsys):
    out = tmp_path / "sweep"
    options = LaunchOptions(kind="slurm", partition="gpu", account="lab", nodes=2, gpus_per_node=8, time_min=600,
                            setup=["source .venv/bin/activate"])
    assert launch_sweep("smoke", ["seed=0,1", "rl.kl_coef=0,0.001"], [], out, options) is None  # submitted only
    jobs = {int(p.stem): _flags(p) for p in fake_sbatch.glob("*.sh")}
    # seed 0: data 101, pretraining 102, RL 103, 104; seed 1: data 105, pretraining 106, RL 107, 108; report 109.
    assert sorted(jobs) == list(range(101, 110))
    names = [jobs[n]["job-name"].removeprefix("echochamber-") for n in sorted(jobs)]
    assert [n if n.startswith("seed") or n == "report" else "shared" for n in names] == [
        "shared", "shared", "seed=0,rl.kl_coef=0", "seed=0,rl.kl_coef=0.001", "shared", "shared",
        "seed=1,rl.kl_coef=0", "seed=1,rl.kl_coef=0.001", "report"]
    assert "dependency" not in jobs[101] and "gpus-per-node" not in jobs[101] and jobs[101]["nodes"] == "1"
    assert jobs[102]["dependency"] == "afterok:101" and jobs[106]["dependency"] == "afterok:105"
    for rl, pre in ((103, 102), (104, 102), (107, 106), (108, 106)):
        assert jobs[rl]["dependency"] == f"afterok:{pre}"
        assert (jobs[rl]["nodes"], jobs[rl]["gpus-per-node"], jobs[rl]["ntasks-per-node"]) == ("2", "8", "1")
        assert (jobs[rl]["partition"], jobs[rl]["account"], jobs[rl]["time"]) == ("gpu", "lab", "600")
    assert jobs[109]["dependency"] == "afterany:103:104:107:108"
    assert "source .venv/bin/activate" in (fake_sbatch / "103.sh").read_text()
    # What each job will run: the RL cell's stage on 2 nodes x 8 GPUs, with its resolved config.
    submission = DelayedSubmission.load(out / "launcher" / "logs" / "103_submitted.pkl")
    stage, config, run_dir, name, nodes, per_node, error_log = submission.args
    assert (submission.function, stage, name, nodes, per_node) == (launcher.run_stage, "rl", "seed=0,rl.kl_coef=0",
                                                                   2, 8)
    assert run_dir == out / "cells" / name / "rl" and error_log == out / "cells" / name / "error.log"
    assert f"init: {out / 'pretrained'}" in Path(config).read_text()
    assert not (out / "data").exists() and not (out / "pretrained").exists()  # nothing ran here
    printed = capsys.readouterr().out
    assert "report job 109" in printed and printed.count("RL job") == 4


def test_torchrun_spans_the_nodes_and_gpus_of_a_job(tmp_path):
    cmd = stage_command("rl", tmp_path / "c.yaml", tmp_path / "rl", "cell", nodes=2, per_node=8, node_rank=1,
                        master="node7", port=29612)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=8", "--node_rank=1", "--master_addr=node7", "--master_port=29612"} <= \
        set(cmd)
    assert cmd[-6:] == ["-m", "echochamber.launcher", "rl", str(tmp_path / "c.yaml"), str(tmp_path / "rl"), "cell"]
    assert stage_command("rl", tmp_path / "c.yaml", tmp_path / "rl", "cell", 1, 1)[1:3] == ["-m", "echochamber.launcher"]
    with pytest.raises(ValueError, match="--nodes must be 1"):
        LaunchOptions(kind="local", nodes=2)
    with pytest.raises(ValueError, match="expected one of local, slurm"):
        LaunchOptions(kind="pbs")
