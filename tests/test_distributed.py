"""Many processes (torchrun, gloo on CPU: the same code paths a GPU cluster runs with NCCL): two processes give
the same weights as one process with the same global batch, for pretraining and for RL, and a two-process RL
run killed with SIGKILL resumes to the same result as one never stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "echochamber"]
ONE = [sys.executable, "-m", "echochamber"]
FP32 = ["device=cpu", "pretrain.autocast=float32", "rl.autocast=float32", "rl.sample_dtype=float32",
        "eval.sample_dtype=float32"]
RL = ["rl.steps=2", "rl.ckpt_every=1", "rl.eval_every=2", "rl.threads=1", "rl.keep_checkpoints=all",
      "eval.n_samples=2", "eval.n_problems=8", "rl.algo=ppo"]


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def process_tree(pid):
    """pid and all its descendants, read from /proc (torchrun starts each worker in a session of its own, so
    killing torchrun's process group leaves the workers running)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
            todo += [int(c) for t in tasks for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:  # it ended while we read
            pass
    return tree


def kill_tree_and_wait(proc, timeout=60):
    """SIGKILL a process and every descendant, as a crash of the whole job would, and wait until all are gone
    (a killed worker holds its run folder's lock until the kernel has torn it down)."""
    pids = process_tree(proc.pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + timeout
    while (alive := [p for p in pids if running(p)]) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive, f"processes {alive} outlived SIGKILL"


def running(pid):
    """Whether pid exists and is not a zombie (a zombie has released its files and locks)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


# Summation order differs (one process's batch sum vs two halves summed by all-reduce); AdamW's normalisation
# turns those 1e-7 gradient differences into up to ~1e-5 weight differences after 12 steps (seen: 2e-6 to 1.2e-5).
def assert_close(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.mark.slow
def test_two_process_pretraining_equals_one_process_with_the_same_global_batch(tmp_path, smoke_pretrained):
    common = ["pretrain", "--config", "smoke", f"pretrain.data_dir={smoke_pretrained / 'data'}",
              "pretrain.max_steps=12", "pretrain.ckpt_every=6", "pretrain.eval_every=12", *FP32]
    run(ONE + common + [f"out_dir={tmp_path / 'one'}", "pretrain.batch_size=16", "pretrain.threads=1"])
    one = weights(tmp_path / "one" / "pretrain" / "model")
    # DDP: 2 processes x 8 rows = the same 16 rows per step.
    run(TORCHRUN + common + [f"out_dir={tmp_path / 'ddp'}", "pretrain.batch_size=8"])
    assert_close(one, weights(tmp_path / "ddp" / "pretrain" / "model"), atol=1e-4)
    # DDP over the compiled training step (pretrain.compile, what auto picks for long runs).
    compiled = run(TORCHRUN + common + [f"out_dir={tmp_path / 'ddp_compiled'}", "pretrain.batch_size=8",
                                        "pretrain.compile=on"])
    assert "training step compiled" in compiled.stderr and "failed" not in compiled.stderr
    assert_close(one, weights(tmp_path / "ddp_compiled" / "pretrain" / "model"), atol=1e-4)
    # FSDP2 with activation checkpointing and two micro-batches per step (gradients reduced on the second only),
    # stopped at step 6 and resumed from its gathered checkpoint.
    fsdp = common + [f"out_dir={tmp_path / 'fsdp'}", "pretrain.batch_size=4", "pretrain.grad_accum=2",
                     "pretrain.fsdp=true", "pretrain.activation_checkpointing=true"]
    run(TORCHRUN + fsdp + ["pretrain.stop_at=6"])
    assert json.loads((tmp_path / "fsdp" / "pretrain" / "checkpoints" / "latest.json").read_text())["step"] == 6
    run(TORCHRUN + fsdp)
    assert_close(one, weights(tmp_path / "fsdp" / "pretrain" / "model"), atol=1e-4)


@pytest.mark.slow
def test_two_process_rl_equals_one_process_and_resumes_after_sigkill(tmp_path, smoke_pretrained):
    init = [f"rl.init={smoke_pretrained / 'pretrain' / 'model'}", *FP32, *RL]
    # One process, sampling in the two halves the two processes sample (4 prompts per generate call).
    run(ONE + ["rl", "--config", "smoke", f"out_dir={tmp_path / 'one'}", "rl.rollout_chunk_prompts=4", *init])
    run(TORCHRUN + ["rl", "--config", "smoke", f"out_dir={tmp_path / 'two'}", *init])
    one, two = tmp_path / "one" / "rl", tmp_path / "two" / "rl"
    first = [json.loads(l) for l in (one / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    assert first == [json.loads(l) for l in (two / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    assert_close(weights(one / "final"), weights(two / "final"), atol=1e-4)
    a, b = (json.loads((d / "eval" / "step_000002.json").read_text())["datasets"]["synthetic_test"] for d in (one, two))
    assert a["n"] == b["n"] == 8  # evaluation split over the two processes and gathered

    # Killed (torchrun and its workers, SIGKILL) after its first checkpoint, then the same command again.
    killed = tmp_path / "killed"
    cmd = TORCHRUN + ["rl", "--config", "smoke", f"out_dir={killed}", *init]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pointer = killed / "rl" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not pointer.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    kill_tree_and_wait(proc)
    assert not (killed / "rl" / "summary.json").exists()
    run(cmd)
    assert (weights(killed / "rl" / "final")["wte.weight"] == weights(two / "final")["wte.weight"]).all()
    assert all(torch.equal(x, y) for x, y in zip(weights(killed / "rl" / "final").values(),
                                                  weights(two / "final").values()))


@pytest.mark.slow
def test_fsdp_reduces_gradients_once_per_step_in_fp32_from_bf16_parameters(tmp_path, smoke_pretrained):
    # Two gloo processes, FSDP2 over olmo-tiny (4 blocks + the root: 5 groups), 2 micro-batches per step, bf16:
    # each step reduce-scatters each group's gradients once (not once per micro-batch), in fp32, and the layers
    # compute with bf16 parameters (the authors' mixed precision).
    script = tmp_path / "fsdp.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "import torch.distributed as tdist, torch.nn as nn\n"
        "from echochamber.config import load_run_config\n"
        "from echochamber.pretrain import pretrain\n"
        "reduced, dtypes = [], set()\n"
        "reduce_scatter, linear = tdist.reduce_scatter_single, nn.Linear.forward\n"
        "def counted(*a, **k):\n"
        "    reduced.append(str(k['input'].dtype))\n"
        "    return reduce_scatter(*a, **k)\n"
        "def seen(self, x):\n"
        "    dtypes.add(str(self.weight.dtype))\n"
        "    return linear(self, x)\n"
        "tdist.reduce_scatter_single, nn.Linear.forward = counted, seen\n"
        "out = Path(sys.argv[1])\n"
        "cfg = load_run_config('smoke', [f'out_dir={out}', f'pretrain.data_dir={sys.argv[2]}', 'device=cpu',\n"
        "    'pretrain.max_steps=2', 'pretrain.batch_size=4', 'pretrain.grad_accum=2', 'pretrain.fsdp=true',\n"
        "    'pretrain.eval_every=2', 'pretrain.ckpt_every=2', 'pretrain.autocast=bfloat16'])\n"
        "pretrain(cfg, out / 'pretrain', progress=False)\n"
        "(out / f\"rank{os.environ['RANK']}.txt\").write_text(f'{len(reduced)} {sorted(set(reduced))} '\n"
        "                                                    f'{sorted(dtypes)}')\n")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "run"), str(smoke_pretrained / "data")])
    for rank in (0, 1):
        seen = (tmp_path / "run" / f"rank{rank}.txt").read_text()
        assert seen == "10 ['torch.float32'] ['torch.bfloat16']", seen


def test_ranks_that_see_different_checkpoints_stop_with_a_clear_error(tmp_path):
    # Two gloo processes whose run folders differ (no shared file system): one has a checkpoint, one has none.
    script = tmp_path / "check.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from echochamber import distributed as dist\n"
        "from echochamber.checkpoint import save_checkpoint\n"
        "from echochamber.config import load_run_config\n"
        "from echochamber.model import ModelConfig, OLMo\n"
        "from echochamber.training import RunFolderError, make_optimizer, start_or_resume, trainer_state\n"
        "ctx = dist.init('cpu')\n"
        "run = Path(sys.argv[1]) / f'rank{ctx.rank}'\n"
        "m = OLMo(ModelConfig(preset='custom', d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16,\n"
        "         rope_theta=10000.0, tie_embeddings=True, init_std=0.02).resolve(vocab_size=12))\n"
        "opt = make_optimizer(m, 1e-3, 0.0, (0.9, 0.95))\n"
        "if ctx.rank == 0:\n"
        "    save_checkpoint(run / 'checkpoints', m, {'step': 2, **trainer_state(opt.state_dict())})\n"
        "dist.barrier(ctx)\n"
        "try:\n"
        "    start_or_resume(run, load_run_config('smoke'), 'rl', m, opt, device='cpu', ctx=ctx)\n"
        "except RunFolderError as e:\n"
        "    print('REFUSED', e, flush=True)\n"
        "dist.barrier(ctx)\n"  # both have decided before either leaves the group
        "dist.shutdown(ctx)\n")
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                str(tmp_path)])
    assert proc.stdout.count("REFUSED") == 2
    assert "see different checkpoints" in proc.stdout and "a file system all of them share" in proc.stdout
