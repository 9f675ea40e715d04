"""Config loading: YAML + dotted overrides, strict about keys and types."""

import pytest

from echochamber.config import ConfigError, builtin_configs, load_run_config, to_dict


def test_builtin_quickstart_loads_and_overrides_apply():
    cfg = load_run_config("quickstart", ["rl.kl_coef=1e-3", "pretrain.betas=[0.9, 0.99]", "seed=3"])
    assert cfg.rl.kl_coef == pytest.approx(1e-3)
    assert cfg.pretrain.betas == (0.9, 0.99)
    assert cfg.seed == 3
    assert "quickstart" in builtin_configs()


@pytest.mark.parametrize("override, message", [
    ("rl.kl_coeff=0.1", "unknown key 'rl.kl_coeff'"),
    ("nosuchsection.x=1", "unknown key 'nosuchsection'"),
    ("rl.steps=ten", "rl.steps: expected an integer"),
    ("rl.steps", "expected key=value"),
    ("rl.loss_agg=batch", "expected one of"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config("quickstart", [override])


def test_on_and_off_stay_words_where_a_setting_takes_them():
    # YAML 1.1 reads `on` / `off` as booleans; a setting whose choices are "auto" / "on" / "off" takes them as typed.
    assert load_run_config("quickstart", ["pretrain.compile=on"]).pretrain.compile == "on"
    assert load_run_config("quickstart", ["pretrain.compile=off"]).pretrain.compile == "off"
    with pytest.raises(ConfigError, match="expected one of"):
        load_run_config("quickstart", ["rl.loss_agg=on"])  # a choice without on / off still refuses a boolean


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rl:\n  steps: 3\n  kl_coef: 0.0\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml\.rl: unknown key\(s\) \['learning_rate'\]"):
        load_run_config(path)


def test_round_trip_through_dict(tmp_path):
    import yaml

    cfg = load_run_config("quickstart", ["rl.steps=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    again = load_run_config(path)
    assert to_dict(again) == to_dict(cfg)


def test_a_config_with_base_starts_from_that_config_and_merges_sections(tmp_path):
    (tmp_path / "world.yaml").write_text("base: quickstart\ndata:\n  synthetic:\n    max_number: 20\n"
                                         "eval:\n  datasets: [synthetic:test]\n")
    (tmp_path / "bigger.yaml").write_text("base: world\nmodel:\n  preset: olmo-small\n")  # found beside it
    cfg = load_run_config(tmp_path / "bigger.yaml")
    quick = load_run_config("quickstart")
    assert cfg.model.preset == "olmo-small" and cfg.data.synthetic.max_number == 20
    assert cfg.data.synthetic.max_factor == quick.data.synthetic.max_factor  # merged key by key, not replaced
    assert cfg.eval.datasets == ["synthetic:test"] and cfg.rl == quick.rl  # lists replace; the rest is the base's


def test_a_base_chain_that_loops_or_names_nothing_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_run_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: no_such_config\n")
    with pytest.raises(ConfigError, match="no_such_config"):
        load_run_config(tmp_path / "c.yaml")


def test_overrides_may_follow_options_on_the_command_line():
    """`echochamber study collapse --out DIR pretrain.max_steps=50` failed with "unrecognized arguments": argparse
    gives a subcommand's KEY=VALUE list only the words before the first option."""
    from echochamber.cli import parse_args

    args = parse_args(["study", "collapse", "--out", "d", "pretrain.max_steps=50", "seed=1"])
    assert (args.name, args.out, args.overrides) == ("collapse", "d", ["pretrain.max_steps=50", "seed=1"])
    args = parse_args(["rl", "rl.steps=2", "--dry-run", "seed=3"])
    assert args.overrides == ["rl.steps=2", "seed=3"] and args.dry_run
    for argv in (["rl", "--bogus"], ["rl", "a.b=1", "--dry-run", "stray"], ["grade", "in.jsonl", "--out", "o", "a=b"]):
        with pytest.raises(SystemExit):  # still errors: an unknown option, a word that is no KEY=VALUE, no overrides
            parse_args(argv)


@pytest.mark.parametrize("name", ["paper_150m", "paper_1b"])
def test_paper_configs_run_the_authors_settings(name):
    """paper_150m / paper_1b as the authors' scripts ran (rosieyzh/openrlhf-pretrain; README "The authors'
    settings"): their three RL arms with the KL each really had, log-probs at the rollout temperature, the critic at
    the rate it really ran at, their in-loop evaluation, and their batch arithmetic."""
    from echochamber.rl.pg import PAPER_KL

    cfg = load_run_config(name)
    p, r, e = cfg.pretrain, cfg.rl, cfg.eval
    assert (p.global_batch, p.lr, p.min_lr_ratio, p.warmup_steps, p.weight_decay, p.grad_clip) == (
        512, 1e-3, 0.1, 5000, 0.1, 1.0)
    assert p.batch_size * p.grad_accum * 8 == 512  # 8 GPUs: the authors' 1B (2 nodes x 4); their 150M: 1 x 4
    assert cfg.data.mixture_kind == "hub" and cfg.data.seq_len == 2048 and cfg.model.vocab_size == 32000
    # RL: 10 passes of 64 prompts x 8 samples, mini-batches of 64, micro-batches of 8.
    assert (r.train_source, r.train_problems, r.steps) == ("gsm8k:train", 0, 10 * (7473 // 64))
    assert (r.prompts_per_step, r.samples_per_prompt, r.minibatch_size, r.micro_batch_size, r.epochs) == (
        64, 8, 64, 8, 1)
    assert (r.temperature, r.top_p, r.max_new_tokens, r.logprob_temperature) == (0.7, 1.0, 1024, 0.7)
    assert (r.lr, r.min_lr_ratio, r.warmup_ratio, r.clip_eps, r.grad_clip, r.weight_decay) == (
        1e-6, 0.1, 0.03, 0.2, 1.0, 0.0)
    assert r.mode == "paper" and r.reward_sees_prompt and not r.interpreter
    # The arms and their KL: k1 in the reward for PPO and reinforce_baseline (it acted), GRPO's k3 loss term
    # without gradient (their packed samples rebuilt it as a constant).
    assert r.algo == "ppo" and r.kl_coef == 1e-3 and r.kl_grad is False
    for algo, kl in (("ppo", ("reward", "k1")), ("reinforce_baseline", ("reward", "k1")), ("grpo", ("loss", "k3"))):
        arm = load_run_config(name, [f"rl.algo={algo}"]).rl
        assert (arm.kl_in, arm.kl_estimator) == ("auto", "auto") and PAPER_KL[algo] == kl
    # The critic as it really ran: the actor's rate, decaying to 0.1 x the nominal 7e-6 = 7e-7.
    assert r.ppo.critic_lr is None and r.ppo.critic_min_lr == pytest.approx(7e-7)
    assert (r.ppo.gamma, r.ppo.gae_lambda, r.ppo.value_clip, r.ppo.whiten_advantages) == (1.0, 0.95, 0.2, True)
    # Expert Iteration, their other script: 64 samples at temperature 1, top-p 0.95, 2048 new tokens; SFT lr 1e-4,
    # batch 256, 2 epochs.
    ei = load_run_config(name, ["rl.algo=ei", "rl.max_new_tokens=2048"]).rl
    assert (ei.max_new_tokens, ei.ei.samples_per_prompt, ei.ei.temperature, ei.ei.top_p) == (2048, 64, 1.0, 0.95)
    assert (ei.ei.lr, ei.ei.batch_size, ei.ei.epochs) == (1e-4, 256, 2)
    # In-loop evaluation as theirs: all of GSM8K test, greedy, 1024 new tokens, no BOS, graded on prompt + response,
    # once per pass over GSM8K train.
    assert (e.datasets, e.n_problems, e.n_samples, e.max_new_tokens, e.add_bos, e.grade_sees_prompt, e.mode) == (
        ["gsm8k:test"], 0, 0, 1024, False, True, "paper")
    assert r.eval_every == r.ckpt_every == 7473 // 64
    # Their offline evaluation, as the config's comment writes it: pass@64 at 2048 tokens, BOS, the response alone.
    offline = load_run_config(name, ["eval.n_samples=64", "eval.add_bos=true", "eval.max_new_tokens=2048",
                                     "eval.grade_sees_prompt=false",
                                     'eval.datasets=[gsm8k:test, math500:test, "aime:2022-2024"]']).eval
    assert (offline.n_samples, offline.temperature, offline.top_p, offline.datasets[2]) == (64, 0.7, 0.95,
                                                                                           "aime:2022-2024")
