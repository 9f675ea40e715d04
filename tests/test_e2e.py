"""The whole pipeline, every stage, through the command line (the `smoke` config; about a minute)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_smoke_runs_every_stage(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "-m", "echochamber", "quickstart", "--config", "smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "data" / "manifest.json").exists()
    assert (out / "pretrain" / "model" / "model.safetensors").exists()
    rl = out / "rl"
    metrics = [json.loads(l) for l in (rl / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("reward_mean", "kl_k1", "kl_k3", "entropy", "clip_frac", "zero_std_frac", "truncation_rate",
                "time/generation", "time/reward", "time/update", "format_share/tinygsm"):
        assert key in metrics[0], key
    assert sorted(p.name for p in (rl / "rollouts").iterdir()) == [f"step_{i:06d}.jsonl" for i in (1, 2, 3)]
    evals = sorted(p.name for p in (rl / "eval").glob("step_*.json"))
    assert evals == ["step_000000.json", "step_000002.json", "step_000003.json"]
    step0 = json.loads((rl / "eval" / "step_000000.json").read_text())
    first = step0["datasets"]["synthetic_test"]
    assert {"pass@1", "pass@k", "maj@k", "format_share", "format_acc"} <= set(first)
    assert 0 < step0["seconds"]["synthetic_test"] <= step0["seconds"]["total"]  # where a cell's time goes
    for summary in (json.loads((rl / "summary.json").read_text()), json.loads((out / "summary.json").read_text())):
        for key in ("pass1_before", "pass1_after"):
            assert 0.0 <= summary[key] <= 1.0
        for key in ("format_share_before", "format_share_after"):
            assert set(summary[key]) == {"tinygsm", "omi1", "text", "unknown"}
            assert sum(summary[key].values()) == pytest.approx(1.0)
        assert summary["wall_seconds"] > 0
    html = (rl / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "pass@1" in proc.stdout and "report:" in proc.stdout
