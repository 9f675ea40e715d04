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
