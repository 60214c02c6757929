import pytest

from poise.commands.cli import config_from_args, make_parser, main
from poise.config.command_configs import SFTConfig
from poise.config.errors import ConfigError
from poise.config.loading import build_config, flat_fields, load_yaml
from poise.config.train_config import TrainConfig


def parse(*argv):
    args = make_parser().parse_args(["train", *argv])
    return config_from_args(TrainConfig, args)


def test_defaults_are_poise():
    cfg = build_config(TrainConfig, {})
    assert cfg.algorithm.advantage == "poise" and cfg.rollout.group_size == 2
    assert cfg.loss.clip_low == 0.2 and cfg.loss.clip_high == 0.28 and cfg.probe.alpha == 100.0


def test_every_field_has_a_docstring():
    for cls in (TrainConfig, SFTConfig):
        missing = [k for k, _, doc in flat_fields(cls) if not doc]
        assert not missing, missing


def test_cli_overrides_and_aliases():
    cfg = parse("--max-steps", "7", "--seed", "3", "--output-dir", "x/y", "--rollout.group_size", "4",
                "--optim.lr", "1e-5", "--task.levels", "t2d1,t3d1")
    assert (cfg.max_steps, cfg.seed, cfg.output_dir, cfg.rollout.group_size) == (7, 3, "x/y", 4)
    assert cfg.optim.lr == 1e-5 and cfg.task.levels == ["t2d1", "t3d1"]


def test_yaml_then_cli_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base: rloo\nrollout:\n  group_size: 3\n  max_new_tokens: 20\n")
    cfg = parse("--config", str(f), "--rollout.max_new_tokens", "30")
    assert cfg.algorithm.advantage == "rloo"  # from the base preset
    assert cfg.rollout.group_size == 3 and cfg.rollout.max_new_tokens == 30


@pytest.mark.parametrize("overrides, key", [
    ({"rollout.group_size": 1}, "rollout.group_size"),
    ({"rollout.max_new_tokens": -5}, "rollout.max_new_tokens"),
    ({"rollout.top_p": 1.5}, "rollout.top_p"),
    ({"loss.dual_clip": 0.5}, "loss.dual_clip"),
    ({"loss.aggregation": "mean"}, "loss.aggregation"),
    ({"algorithm.advantage": "magic"}, "algorithm.advantage"),
    ({"probe.layer": 1.5}, "probe.layer"),
    ({"optim.lr": "fast"}, "optim.lr"),
    ({"max_steps": 2.5}, "max_steps"),
    ({"rollout.groupsize": 2}, "rollout.groupsize"),
    ({"probe.buffer_size": 10}, "probe.buffer_size"),
    ({"probe.buffer_steps": 4}, "probe.buffer_steps"),  # fewer steps than min_fit_steps (8): never fitted
    ({"probe.buffer_steps": -1}, "probe.buffer_steps"),
    ({"max_steps": True}, "max_steps"),  # a bool is not read as 1
    ({"rollout.temperature": False}, "rollout.temperature"),
    ({"task.levels": [["t1d1"]]}, "task.levels.0"),  # draccus names the list item
    ({"rollout": 3}, "rollout"),  # a section, not a value
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, overrides)
    assert str(e.value).startswith(key + ":")


def test_unknown_yaml_key_fails(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rollout:\n  groop_size: 2\n")
    with pytest.raises(ConfigError, match="rollout.groop_size: unknown"):
        build_config(TrainConfig, load_yaml(f))


def test_cli_reports_config_error(capsys):
    assert main(["train", "--rollout.group_size", "1"]) == 2
    assert "rollout.group_size" in capsys.readouterr().err


def test_help_lists_every_option_with_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, _, doc in flat_fields(TrainConfig):
        assert f"--{key}" in text
        assert " ".join(doc.split()[:4]) in text


def test_resume_is_a_flag():
    assert parse("--resume").resume is True and parse("--resume", "false").resume is False
    assert parse().resume is False


def test_cli_reports_bad_input_found_at_start_up_without_a_traceback(capsys, tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert main(["train", "--task.name", "dataset", "--task.path", str(missing), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "poise train: error: " in err and "nope.jsonl: no such file" in err and "Traceback" not in err


@pytest.mark.parametrize("key, good, bad", [
    ("algorithm.advantage", "dr_grpo", "ppo"), ("critic.mode", "outcome", "td"),
    ("loss.aggregation", "seq-mean-token-sum", "mean"), ("model.dtype", "bfloat16", "fp8"),
    ("algorithm.advantage", "rloo", 1),  # not a string: refused, not coerced
])
def test_choice_fields_take_only_their_choices_and_help_lists_them(key, good, bad, capsys):
    assert flat_dict(build_config(TrainConfig, {key: good}))[key] == good
    with pytest.raises(ConfigError, match=rf"^{key}: Cannot convert .* into one of: "):
        build_config(TrainConfig, {key: bad})
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    choices = dict((k, tp) for k, tp, _ in flat_fields(TrainConfig))[key].__args__
    assert "{" + ",".join(choices) + "}" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def flat_dict(cfg) -> dict:
    from poise.config.loading import flatten_dict, to_dict

    return flatten_dict(to_dict(cfg))
