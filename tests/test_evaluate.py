"""Evaluation metrics: the unbiased pass@k estimator against brute force, majority voting, format shares."""

import itertools
import math

import pytest

from echochamber.evaluate import label_table, majority_correct, pass_at_k


@pytest.mark.parametrize("n, c", [(5, 0), (5, 1), (6, 3), (8, 7), (8, 8), (10, 4)])
def test_pass_at_k_equals_enumeration_of_all_k_subsets(n, c):
    samples = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_large_n_stays_finite():
    # C(64, 32) overflows float factorials; the product form does not.
    value = pass_at_k(1024, 3, 64)
    assert 0 < value < 1 and math.isfinite(value)
    with pytest.raises(ValueError, match="at least 9 samples"):
        pass_at_k(8, 1, 9)


def test_majority_vote():
    assert majority_correct(["5", "6", "5", None], [True, False, True, False]) is True
    assert majority_correct(["6", "6", "5", None], [False, False, True, False]) is False
    assert majority_correct([None, None], [False, False]) is False  # no answer never wins
    # The same number written differently votes together.
    assert majority_correct(["29.0", "30", "29", "1,000"], [True, False, True, False]) is True
    # A tie goes to the answer seen first.
    assert majority_correct(["7", "5", "5", "7"], [False, True, True, False]) is False
    # The grader's equality: code's float rounding and the integer are one answer (2 votes beat 1).
    assert majority_correct(["17.999999999999996", "19", "18"], [True, False, True]) is True
    assert majority_correct(["19", "17.999999999999996", "18"], [False, True, True]) is True
    # Not everything close is equal: integers compare exactly.
    assert majority_correct(["1000000", "1000001", "7", "7"], [True, False, False, False]) is False


def test_label_table_shares_and_accuracy():
    labels = ["tinygsm", "tinygsm", "text", "unknown"]
    correct = [True, False, True, False]
    s, acc = label_table(labels, correct)
    assert s == {"tinygsm": 0.5, "omi1": 0.0, "text": 0.25, "unknown": 0.25}
    assert acc["tinygsm"] == 0.5 and acc["text"] == 1.0 and acc["omi1"] is None


@pytest.mark.parametrize("sees_prompt, label", [(False, "text"), (True, "tinygsm")])
def test_grade_sees_prompt_hands_the_grader_question_and_response(monkeypatch, pool, sees_prompt, label):
    """eval.grade_sees_prompt: the authors' in-loop evaluation graded prompt + response (their RL reward
    function), so a question containing "def" labels a prose answer TinyGSM in paper mode; their offline
    evaluation graded the response alone. Greedy rows and samples alike."""
    from types import SimpleNamespace

    from echochamber import evaluate
    from echochamber.tasks import Problem

    response = "\n\nx is 2 + 3 = 5. The answer is \\boxed{5}."
    monkeypatch.setattr(evaluate, "greedy_and_samples", lambda *a, **k: ([response], [[response, response]]))
    tok = SimpleNamespace(encode_batch=lambda texts: [t.split() for t in texts])
    ecfg = evaluate.EvalConfig(mode="paper", n_samples=2, grade_sees_prompt=sees_prompt)
    problem = Problem("p0", "Please define x as 2 plus 3. What is x?", "5")
    result = evaluate.evaluate_dataset(None, tok, [problem], ecfg, seed=0, out_dir=None, name="t", pool=pool)
    assert result["pass@1"] == 1.0 and result["format_share"][label] == 1.0
    assert result["sample_format_share"][label] == 1.0


def test_pass_at_k_curve_holds_every_power_of_two_up_to_the_sample_count(monkeypatch, pool):
    """pass@j for j = 1, 2, 4 (and n) from the same n samples: the late-training pass@k curve."""
    from types import SimpleNamespace

    from echochamber import evaluate
    from echochamber.tasks import Problem

    right, wrong = "\n\nx is 2 + 3 = 5. The answer is \\boxed{5}.", "\n\nx is 2 + 3 = 6. The answer is \\boxed{6}."
    # problem 0: 1 of 4 samples right; problem 1: none of 4
    samples = [[right, wrong, wrong, wrong], [wrong] * 4]
    monkeypatch.setattr(evaluate, "greedy_and_samples", lambda *a, **k: ([right, wrong], samples))
    tok = SimpleNamespace(encode_batch=lambda texts: [t.split() for t in texts])
    problems = [Problem("p0", "What is 2 plus 3?", "5"), Problem("p1", "What is 2 plus 3?", "5")]
    result = evaluate.evaluate_dataset(None, tok, problems, evaluate.EvalConfig(n_samples=4), seed=0, out_dir=None,
                                       name="t", pool=pool)
    # pass@j of problem 0 = 1 - C(3, j) / C(4, j): 1/4, 1/2, 1
    assert result["pass@k_curve"] == pytest.approx({"1": 0.125, "2": 0.25, "4": 0.5})
    assert result["pass@k"] == result["pass@k_curve"]["4"]


def test_greedy_only_evaluations_draw_no_samples_and_no_probes(monkeypatch, tmp_path):
    """evaluate(..., greedy_only=True), what RL asks between its first and last evaluation under
    eval.between_greedy_only: the samples and the probes stay at the ends."""
    from types import SimpleNamespace

    from echochamber import evaluate
    from echochamber.config import RunConfig

    seen = []
    monkeypatch.setattr(evaluate, "load_dataset", lambda *a, **k: [])
    monkeypatch.setattr(evaluate, "sampling_model", lambda model, cfg: model)
    monkeypatch.setattr(evaluate, "evaluate_dataset",
                        lambda model, tok, problems, ecfg, **k: seen.append((ecfg.n_samples, ecfg.probe)) or {})
    monkeypatch.setattr(evaluate.forced, "probe_dataset", lambda *a, **k: seen.append("probe") or {})
    cfg = RunConfig()
    cfg.eval.n_samples, cfg.eval.probe = 8, True
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode: None)
    for greedy_only in (True, False):
        evaluate.evaluate(model, None, cfg, step=0, out_root=tmp_path, free_bytes=1.0, greedy_only=greedy_only)
    assert seen == [(0, False), (8, True), "probe"]
