"""Pretraining: exact resume, gradient accumulation, and learning far below the unigram baseline."""

import json

import pytest
import torch

from echochamber.config import load_run_config
from echochamber.data import build_dataset, unigram_entropy
from echochamber.pretrain import pretrain
from echochamber.runio import read_metrics
from conftest import count_host_reads


def tiny_cfg(tmp_path, *overrides):
    return load_run_config("quickstart", [
        f"out_dir={tmp_path}", "data.n_problems=300", "data.seq_len=96", "data.vocab_size=384",
        "model.preset=olmo-tiny", "pretrain.batch_size=8", "pretrain.warmup_steps=2", "pretrain.log_every=1",
        "pretrain.eval_every=4", "pretrain.eval_batches=2", "pretrain.ckpt_every=4", *overrides])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    build_dataset(tiny_cfg(root).data, root / "data", progress=False)
    return root / "data"


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir)]


def test_resume_equals_straight_run(tmp_path, data_dir):
    common = [f"pretrain.data_dir={data_dir}", "pretrain.max_steps=8"]
    straight = pretrain(tiny_cfg(tmp_path / "a", *common), tmp_path / "a" / "pretrain", progress=False)
    pretrain(tiny_cfg(tmp_path / "b", *common, "pretrain.stop_at=4"), tmp_path / "b" / "pretrain", progress=False)
    assert not (tmp_path / "b" / "pretrain" / "model").exists()  # stopped, not finished
    assert json.loads((tmp_path / "b" / "pretrain" / "checkpoints" / "latest.json").read_text())["step"] == 4
    stopped_wall = torch.load(tmp_path / "b" / "pretrain" / "checkpoints" / "step_000004" / "trainer_state.pt",
                              weights_only=False)["wall_seconds"]
    resumed = pretrain(tiny_cfg(tmp_path / "b", *common), tmp_path / "b" / "pretrain", progress=False)

    a, b = losses(tmp_path / "a" / "pretrain"), losses(tmp_path / "b" / "pretrain")
    assert [s for s, _ in a] == list(range(1, 9)) and [s for s, _ in b] == list(range(1, 9))
    assert [l for _, l in a] == [l for _, l in b]  # loss for loss, bit for bit
    # the wall time since the pretraining began goes on across the resumption, from the checkpoint's
    walls = [r["time/wall"] for r in read_metrics(tmp_path / "b" / "pretrain")]
    assert len(walls) == 8 and all(w > 0 for w in walls) and walls[4] > walls[3]
    assert 0 < stopped_wall <= walls[4]
    from safetensors.torch import load_file

    sa, sb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data_dir):
    common = [f"pretrain.data_dir={data_dir}", "pretrain.max_steps=3", "pretrain.autocast=float32"]
    pretrain(tiny_cfg(tmp_path / "big", *common, "pretrain.batch_size=8"), tmp_path / "big" / "p", progress=False)
    pretrain(tiny_cfg(tmp_path / "acc", *common, "pretrain.batch_size=4", "pretrain.grad_accum=2"),
             tmp_path / "acc" / "p", progress=False)
    big, acc = losses(tmp_path / "big" / "p"), losses(tmp_path / "acc" / "p")
    for (_, x), (_, y) in zip(big, acc):
        assert x == pytest.approx(y, rel=1e-4)


def test_validation_loss_falls_far_below_unigram(tmp_path, data_dir):
    cfg = tiny_cfg(tmp_path, f"pretrain.data_dir={data_dir}", "pretrain.max_steps=200", "pretrain.batch_size=24", "pretrain.lr=3e-3",
                   "pretrain.warmup_steps=20", "pretrain.eval_every=200", "pretrain.ckpt_every=200",
                   "pretrain.log_every=50")
    pretrain(cfg, tmp_path / "pretrain", progress=False)
    val = [r["val_loss"] for r in read_metrics(tmp_path / "pretrain") if "val_loss" in r][-1]
    baseline = unigram_entropy(data_dir)
    assert val < 0.35 * baseline, f"validation loss {val:.3f} vs unigram entropy {baseline:.3f}"


def test_auto_compiles_the_training_step_where_it_pays():
    from echochamber.pretrain import COMPILE_MIN_STEPS, PretrainConfig, use_compile

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    auto = PretrainConfig()
    assert use_compile(auto, gpu, 10, sharded=False)  # a GPU: always
    assert use_compile(auto, cpu, COMPILE_MIN_STEPS, sharded=False)  # a CPU: a long run wins the compile time back
    assert not use_compile(auto, cpu, COMPILE_MIN_STEPS - 1, sharded=False)  # a short one (tests, smoke) does not
    assert use_compile(PretrainConfig(compile="on"), cpu, 1, sharded=False)
    assert not use_compile(PretrainConfig(compile="off"), gpu, 10 ** 6, sharded=False)
    assert not use_compile(PretrainConfig(compile="on"), gpu, 10 ** 6, sharded=True)  # FSDP: eager
    with pytest.raises(Exception, match="compile"):
        load_run_config("smoke", ["pretrain.compile=fast"])


def test_a_step_reads_the_device_as_often_whatever_its_micro_batches(tmp_path, data_dir, monkeypatch):
    # The same 8 rows per step in 1 and in 4 micro-batches: the number of host reads of tensor values (each a
    # wait for the GPU) must not grow with the micro-batches.
    reads = count_host_reads(monkeypatch)
    counts = {}
    for batch, accum in ((8, 1), (2, 4)):
        reads.clear()
        cfg = tiny_cfg(tmp_path / str(accum), f"pretrain.data_dir={data_dir}", "pretrain.max_steps=3",
                       f"pretrain.batch_size={batch}", f"pretrain.grad_accum={accum}", "pretrain.eval_every=3",
                       "pretrain.ckpt_every=3", "pretrain.eval_batches=1")
        pretrain(cfg, tmp_path / str(accum) / "pretrain", progress=False)
        counts[accum] = len(reads)
    assert counts[4] == counts[1], counts
