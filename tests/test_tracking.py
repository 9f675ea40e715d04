"""tracking.Tracker: scalars to TensorBoard always and to Weights & Biases with log.wandb, checked offline
(WANDB_MODE=offline; W&B's files under tmp_path) by reading back the run file W&B writes."""

import json
import sys
import time
from pathlib import Path

import pytest

from echochamber.config import load_run_config, to_dict
from echochamber.tracking import Tracker


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (.wandb): a 7-byte header, then a LevelDB-style log of 32 KiB
    blocks whose records carry a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunk)
            records.append(rec)
            chunk = b""
    return records


def of_kind(records: list, kind: str) -> list:
    return [r for r in records if r.WhichOneof("record_type") == kind]


def finished_run_records(run_dir: Path) -> list:
    """The records of the stage's one W&B run file once they end with the run's exit record: W&B's service
    process writes the file on its own after `finish()` returns (seen: the 7-byte header alone, then the run)."""
    deadline = time.monotonic() + 60
    while True:
        [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        records = wandb_records(run_file)
        if of_kind(records, "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)


def test_wandb_gets_every_scalar_and_the_resolved_config_once_and_a_resume_continues_the_run(tmp_path,
                                                                                             offline_wandb):
    cfg = load_run_config("quickstart", [f"out_dir={tmp_path / 'as_fm3_tg'}", "log.wandb=true", "rl.kl_coef=0.01"])
    run_dir = tmp_path / "as_fm3_tg" / "rl"
    run_dir.mkdir(parents=True)
    tracker = Tracker(run_dir, cfg, "rl")
    tracker.log({"step": 1, "reward_mean": 0.5, "format_acc/text": None}, 1, "rl")
    tracker.log({"step": 2, "reward_mean": 0.75, "format_acc/text": 1.0}, 2, "rl")
    tracker.close()

    records = finished_run_records(run_dir)
    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    [run] = of_kind(records, "run")
    assert (run.run.display_name, run.run.run_group, run.run.job_type) == ("as_fm3_tg/rl", "as_fm3_tg", "rl")
    assert run.run.run_id == (run_dir / "wandb_run_id").read_text().strip()
    sent = {u.key: json.loads(u.value_json) for u in run.run.config.update if not u.key.startswith("_")}
    assert sent == json.loads(json.dumps(to_dict(cfg)))  # the resolved config, every section
    assert not of_kind(records, "config")  # sent once, with the run
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item
                if not (i.key or i.nested_key[0]).startswith("_")} for r in of_kind(records, "history")]
    assert history == [{"rl/reward_mean": 0.5}, {"rl/reward_mean": 0.75, "rl/format_acc/text": 1.0}]

    # TensorBoard beside it, as before.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("rl/reward_mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("rl/format_acc/text")] == [(2, 1.0)]

    # A resumed stage continues the same W&B run.
    tracker = Tracker(run_dir, cfg, "rl")
    tracker.log({"step": 3, "reward_mean": 1.0}, 3, "rl")
    tracker.close()
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and all(r.name == run_file.name for r in runs)


def test_without_log_wandb_only_tensorboard_and_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    cfg = load_run_config("quickstart", [f"out_dir={tmp_path}"])
    tracker = Tracker(tmp_path, cfg, "pretrain")
    tracker.log({"step": 1, "loss": 2.0}, 1, "pretrain")
    tracker.close()
    assert list((tmp_path / "tb").iterdir()) and not (tmp_path / "wandb").exists()
    cfg.log.wandb = True
    with pytest.raises(ImportError, match=r"pip install 'echochamber\[wandb\]'"):
        Tracker(tmp_path, cfg, "pretrain")
