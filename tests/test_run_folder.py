"""One run, one folder: an exclusive lock, a refused resume with another config, no stale "before RL"
evaluation, and bad values as one clear line at load time."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from echochamber.checkpoint import save_checkpoint
from echochamber.cli import main
from echochamber.config import load_run_config
from echochamber.model import ModelConfig, OLMo
from echochamber.runio import write_run_metadata
from echochamber.training import RunFolderError, config_changes, exclusive, make_optimizer, start_or_resume, trainer_state

HOLD = "import sys, time; from echochamber.training import exclusive\nwith exclusive(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(60)"
TRY = "import sys; from echochamber.training import exclusive\nwith exclusive(sys.argv[1]): print('got it')"


def test_a_held_run_folder_is_refused_and_freed_when_its_holder_dies(tmp_path):
    with exclusive(tmp_path):
        proc = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], capture_output=True, text=True)
        assert proc.returncode != 0
        assert f"is in use by another process (pid {os.getpid()})" in proc.stderr
        with exclusive(tmp_path):  # the same process may re-enter (the sweep runs stages in one process)
            pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match="in use by another process"):
        with exclusive(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive(tmp_path):  # the OS released it with the dead process
        pass


def tiny():
    return OLMo(ModelConfig(preset="custom", d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16,
                            rope_theta=10000.0, tie_embeddings=True, init_std=0.02).resolve(vocab_size=12))


def test_a_pretraining_resumed_compiled_or_eager_is_the_same_run(tmp_path):
    model = tiny()
    opt = make_optimizer(model, 1e-3, 0.0, (0.9, 0.95))
    write_run_metadata(tmp_path, load_run_config("smoke", ["pretrain.compile=off"]), "pretrain")
    save_checkpoint(tmp_path / "checkpoints", model, {"step": 3, **trainer_state(opt.state_dict())})
    resumed = start_or_resume(tmp_path, load_run_config("smoke", ["pretrain.compile=on"]), "pretrain", model, opt,
                              device="cpu")
    assert resumed["step"] == 3  # compiling changes only the rounding: not compared
    with pytest.raises(RunFolderError, match="pretrain.lr"):
        start_or_resume(tmp_path, load_run_config("smoke", ["pretrain.lr=0.5"]), "pretrain", model, opt, device="cpu")


def test_resume_with_a_changed_config_is_refused_unless_allowed(tmp_path):
    cfg = load_run_config("smoke")
    model = tiny()
    opt = make_optimizer(model, 1e-3, 0.0, (0.9, 0.95))
    write_run_metadata(tmp_path, cfg, "rl")
    save_checkpoint(tmp_path / "checkpoints", model, {"step": 3, **trainer_state(opt.state_dict())})
    same = start_or_resume(tmp_path, load_run_config("smoke", ["rl.threads=1"]), "rl", model, opt, device="cpu")
    assert same["step"] == 3  # threads change no result: not compared
    changed = load_run_config("smoke", ["rl.lr=0.001", "seed=5"])
    with pytest.raises(RunFolderError) as e:
        start_or_resume(tmp_path, changed, "rl", model, opt, device="cpu")
    msg = str(e.value)
    assert "rl.lr: 0.0001 -> 0.001" in msg and "rl.seed: 0 -> 5" in msg and "--allow-config-change" in msg
    assert "pretrain" not in msg  # pretraining's keys are not RL's business
    state = start_or_resume(tmp_path, changed, "rl", model, opt, device="cpu", allow_config_change=True)
    assert state["step"] == 3
    assert "lr: 0.001" in (tmp_path / "rl_config.yaml").read_text()  # the recorded config is updated


def test_a_knob_added_after_the_run_started_blocks_its_resume_only_off_its_default(tmp_path):
    # The run started before rl.ppo.freeze_actor_steps existed: its recorded config lacks the key.
    cfg = load_run_config("smoke")
    model = tiny()
    opt = make_optimizer(model, 1e-3, 0.0, (0.9, 0.95))
    write_run_metadata(tmp_path, cfg, "rl")
    recorded = tmp_path / "rl_config.yaml"
    old = yaml.safe_load(recorded.read_text())
    del old["rl"]["ppo"]["freeze_actor_steps"]
    recorded.write_text(yaml.safe_dump(old))
    save_checkpoint(tmp_path / "checkpoints", model, {"step": 3, **trainer_state(opt.state_dict())})
    assert start_or_resume(tmp_path, cfg, "rl", model, opt, device="cpu")["step"] == 3  # default: no change
    with pytest.raises(RunFolderError, match="rl.ppo.freeze_actor_steps: None -> 2"):
        start_or_resume(tmp_path, load_run_config("smoke", ["rl.ppo.freeze_actor_steps=2"]), "rl", model, opt,
                        device="cpu")
    assert "rl.lr" in "; ".join(config_changes({"rl": {}}, {"rl": {"lr": 0.5}}, "rl", {"rl": {"lr": 0.1}}))


@pytest.mark.slow
def test_a_stale_step0_evaluation_from_other_weights_is_not_reused(tmp_path, smoke_pretrained):
    # A failed earlier attempt left eval/step_000000.json made on other weights (and an impossible pass@1).
    rl = tmp_path / "rl"
    (rl / "eval").mkdir(parents=True)
    stale = {"step": 0, "init": "elsewhere:0", "datasets": {"synthetic_test": {
        "n": 1, "pass@1": 0.987, "format_share": {"tinygsm": 1.0, "omi1": 0.0, "text": 0.0, "unknown": 0.0}}}}
    (rl / "eval" / "step_000000.json").write_text(json.dumps(stale))
    proc = subprocess.run([sys.executable, "-m", "echochamber", "rl", "--config", "smoke", f"out_dir={tmp_path}",
                           f"rl.init={smoke_pretrained / 'pretrain' / 'model'}", "rl.steps=1", "eval.n_samples=0",
                           "eval.n_problems=8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((rl / "summary.json").read_text())
    assert summary["pass1_before"] != 0.987
    assert json.loads((rl / "eval" / "step_000000.json").read_text())["init"] != "elsewhere:0"


@pytest.mark.parametrize("override,message", [
    ("rl.samples_per_prompt=0", "rl: samples_per_prompt must be >= 1, got 0"),
    ("pretrain.batch_size=-1", "pretrain: batch_size must be >= 1, got -1"),
    ("pretrain.ckpt_every=0", "pretrain: ckpt_every must be >= 1, got 0"),
    ("rl.samples_per_prompt=1", "rl.algo=grpo compares the samples of a prompt"),
    ("rl.kl_coef=-1", "rl: kl_coef must be >= 0"),
    ("rl.typo=1", "unknown key 'rl.typo'"),
])
def test_bad_values_are_one_line_at_load_time(override, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["rl", "--config", "smoke", override])
    text = str(e.value.code)
    assert message in text and "\n" not in text and "Traceback" not in text


def test_a_missing_model_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["rl", "--config", "smoke", f"out_dir={tmp_path}"])
    assert "tokenizer.json" in str(e.value.code) and "\n" not in str(e.value.code)


@pytest.mark.parametrize("error,expected", [
    (OSError(28, "No space left on device", "/runs/x/metrics.jsonl"), "No space left on device: /runs/x/metrics.jsonl"),
    (PermissionError(13, "Permission denied", "/runs/x"), "Permission denied: /runs/x"),
])
def test_disk_full_and_permission_denied_are_one_line(monkeypatch, error, expected):
    import echochamber.cli as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_rl", fail)
    with pytest.raises(SystemExit) as e:
        main(["rl", "--config", "smoke"])
    assert str(e.value.code) == f"echochamber rl: {expected}"


def test_a_bad_mixture_name_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["data", "--config", "smoke", f"out_dir={tmp_path}", "data.mixture=tg_4xnope"])
    text = str(e.value.code)
    assert text.startswith("echochamber data: ") and "nope" in text and "\n" not in text


def test_malformed_and_non_utf8_jsonl_to_grade_are_one_line_naming_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"response": "1", "gold": "1"}\n{"response": \n')
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"response": "1", "gold": "1"}\n{"response": "caf\xe9", "gold": "1"}\n')
    for path in (bad_json, not_utf8):
        with pytest.raises(SystemExit) as e:
            main(["grade", str(path), "--out", str(tmp_path / "out.jsonl")])
        text = str(e.value.code)
        assert f"{path}:2" in text and "\n" not in text, text
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_run_record_names_every_package_the_lock_and_the_machine(tmp_path):
    """rl_run.json names math-verify's version (it read "unknown": the module has no __version__), every installed
    package, where they differ from the lock file, the CPU's kernels and the thread count."""
    from importlib import metadata

    from echochamber.runio import lock_differences

    meta = write_run_metadata(tmp_path, load_run_config("smoke"), "rl")
    assert meta == json.loads((tmp_path / "rl_run.json").read_text())
    assert meta["versions"]["math-verify"] == metadata.version("math-verify") != "unknown"
    assert meta["packages"]["torch"] == torch.__version__ and meta["packages"]["numpy"] == metadata.version("numpy")
    assert meta["machine"]["threads"] == torch.get_num_threads() >= 1
    assert meta["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    lock = tmp_path / "constraints.txt"
    lock.write_text(f"# a comment\nNumPy=={metadata.version('numpy')}\ntorch==2.0.1\nno-such-package==1.0\n")
    assert lock_differences(meta["packages"], lock) == [f"torch {torch.__version__}, lock 2.0.1",
                                                       "no-such-package not installed, lock 1.0"]
    lock.write_text(f"torch=={torch.__version__.split('+')[0]}\n")  # a local label (+cpu) is no difference
    assert lock_differences(meta["packages"], lock) == []
    assert lock_differences(meta["packages"], tmp_path / "absent.txt") is None


def test_every_dependency_is_in_the_lock_file():
    """install.sh installs with -c constraints.txt: a dependency added to pyproject.toml without a locked version
    would resolve to whatever is newest on the day of the install (what made a fresh clone's quickstart differ)."""
    import re
    import tomllib

    from echochamber.runio import LOCK_FILE, _normalise

    if not LOCK_FILE.exists():
        pytest.skip("not a checkout (no constraints.txt beside src/)")
    project = tomllib.loads((LOCK_FILE.parent / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    locked = {_normalise(line.split("==")[0]) for line in LOCK_FILE.read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    names = {_normalise(re.match(r"[A-Za-z0-9_.\-]+", req).group()) for req in wanted
             if "sys_platform == 'linux'" not in req or sys.platform == "linux"}
    assert names - locked == set()
