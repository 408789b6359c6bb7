"""What the user typed is what runs: values are typed by the schema, never by YAML 1.1's guesses (0123 → 83)."""

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.arms import ARM_OF_REPLAY, ARM_ORDER, ARMS, BUGGY, BY_NAME, COMPARISONS, CORRECT
from experiments.config import ConfigError, load_config, split_key_value
from experiments.rundir import run_dir
from experiments.train import main
from sam import REPLAY_MODES
from tests.conftest import REPO, run_dirs


def value_of(cfg, key):
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


# (override as typed, key, the value the config must hold) — the right values written out by hand
AS_TYPED = [
    ("run_name=0123", "run_name", "0123"),  # YAML 1.1: octal 83
    ("tracking.project=0777", "tracking.project", "0777"),  # YAML 1.1: 511
    ("tracking.group=1.10", "tracking.group", "1.10"),  # a float: 1.1
    ("tracking.group=on", "tracking.group", "on"),  # a bool: True
    ("tracking.job_type=1:30", "tracking.job_type", "1:30"),  # sexagesimal: 90
    ("arm=yes", "arm", "yes"),
    ("model.name_or_path=1e3", "model.name_or_path", "1e3"),
    ("run_name=a #b", "run_name", "a #b"),  # no YAML comment either
    ("run_name=null", "run_name", None),  # the one keyword: clears an optional key
    ("run_name='null'", "run_name", "null"),  # quotes make it text
    ('run_name="0123"', "run_name", "0123"),
    ("tracking.tags=[0123, on, 1.10, 'x, y']", "tracking.tags", ["0123", "on", "1.10", "x, y"]),  # a list of str
    ("tracking.tags=[]", "tracking.tags", []),
    # numbers and booleans only for keys typed so, by Python's rules
    ("seed=0123", "seed", 123),
    ("train.max_updates=1_000", "train.max_updates", 1000),
    ("train.max_updates=null", "train.max_updates", None),
    ("optim.lr=3e-4", "optim.lr", 0.0003),
    ("optim.adaptive=on", "optim.adaptive", True),
    ("optim.adaptive=false", "optim.adaptive", False),
    ("optim.betas=[0.9, 0.99]", "optim.betas", [0.9, 0.99]),
]


@pytest.mark.parametrize("override, key, expected", AS_TYPED, ids=[a for a, _, _ in AS_TYPED])
def test_overrides_keep_the_text_of_string_keys_and_type_the_others(override, key, expected):
    got = value_of(load_config([], [override]), key)
    assert got == expected and type(got) is type(expected)


def test_a_yaml_file_is_read_the_same_way(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "run_name: 0123\ntracking:\n  project: 0777\n  tags: [on, 0123]\nseed: 010\n"
        "optim:\n  adaptive: yes\n  lr: 3e-4\n"
    )
    cfg = load_config([path])
    assert (cfg.run_name, cfg.tracking.project, list(cfg.tracking.tags)) == ("0123", "0777", ["on", "0123"])
    assert (cfg.seed, cfg.optim.adaptive, cfg.optim.lr) == (10, True, 0.0003)


def test_the_run_lands_in_the_directory_named_as_typed(tiny_run, tmp_path):
    assert run_dir(load_config([], ["run_name=0123", f"results_dir={tmp_path}"])) == tmp_path / "runs/adhoc/0123"
    assert main(tiny_run("sam_full", "run_name=0123", "train.max_updates=1", "train.epochs=1")) == 0
    (run,) = run_dirs(tmp_path)
    assert run.name == "0123"
    assert json.loads((run / "summary.json").read_text())["run_id"] == "0123"


ECHOED = [
    (
        ["tracking.mode=on"],
        "tracking.mode='on' is not allowed; choose one of: offline, online, disabled (override 'tracking.mode=on')",
    ),
    (["train.epochs=00"], "train.epochs=0 is out of range; it must be >= 1 (override 'train.epochs=00')"),
    (["seed=1:30"], "(override 'seed=1:30')"),
    (
        ["tracking.tags=foo"],
        "tracking.tags: 'foo' is not a list; write a list like [foo] (override 'tracking.tags=foo')",
    ),
    (
        ["data.max_seq_length=64", "data.doc_stride=040"],
        "data.doc_stride=40 must be < data.max_seq_length/2 (32) so windows advance "
        "(override 'data.doc_stride=040'; override 'data.max_seq_length=64')",
    ),
    (["optim.replay=none", "arm=sam_full"], "(override 'arm=sam_full'; override 'optim.replay=none')"),
]


@pytest.mark.parametrize("overrides, message", ECHOED, ids=[o[0] for o, _ in ECHOED])
def test_config_errors_echo_the_override_as_typed(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config([], overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(
        ConfigError, match=r"train.epochs=0 is out of range; it must be >= 1 \(config file '.*bad.yaml'\)"
    ):
        load_config([path])


def test_cli_exits_2_and_prints_the_users_text(tiny_run, tmp_path, capsys):
    assert main(tiny_run("sam_full", "tracking.mode=on")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "config error: tracking.mode='on' is not allowed; choose one of: offline, online, disabled "
        "(override 'tracking.mode=on')"
    ]
    assert not Path(tmp_path / "runs").exists()


def test_the_arm_table_and_the_arm_files_agree_one_to_one():
    """Adding an arm is one row in experiments.arms.ARMS and one configs/arm/<name>.yaml holding exactly
    `arm: <name>` and `optim.replay: <replay>`: every row has its file, every file its row, and config's
    replay → arm derivation, the report order and the plot styles all come from that table."""
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "configs" / "arm").glob("*.yaml")}
    assert sorted(files) == sorted(arm.name for arm in ARMS)
    for arm in ARMS:
        assert files[arm.name] == {"arm": arm.name, "optim": {"replay": arm.replay}}, arm.name
        cfg = load_config([REPO / "configs" / "default.yaml", REPO / "configs" / "arm" / f"{arm.name}.yaml"])
        assert (cfg.arm, cfg.optim.replay) == (arm.name, arm.replay)
        derived = load_config([REPO / "configs" / "default.yaml"], [f"optim.replay={arm.replay}", "arm=null"])
        assert derived.arm == arm.name
    assert len(ARM_OF_REPLAY) == len(ARMS) == len(BY_NAME) == len(ARM_ORDER)  # names and replay modes unique
    assert sorted(ARM_OF_REPLAY) == sorted(REPLAY_MODES)  # every replay rule of sam.train_step is one arm
    assert {CORRECT, BUGGY} <= set(ARM_ORDER)
    assert all(a in BY_NAME and b in BY_NAME and a != b for a, b, _ in COMPARISONS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a=b", ("a", "b")),
        (" data.seed =  0123 ", ("data.seed", "  0123 ")),  # the key is trimmed, the value kept as typed
        ("run_name==x", ("run_name", "=x")),  # only the first "=" splits
        ("out=", ("out", "")),
        ("=b", ValueError),
        ("configs/default.yaml", ValueError),
    ],
)
def test_one_key_value_rule_for_every_command_line(text, expected):
    """experiments.config.split_key_value is the split that training, the sweep, analysis.report and
    analysis.sharpness all use; each then types the value and words its own error."""
    if expected is ValueError:
        with pytest.raises(ValueError):
            split_key_value(text)
    else:
        assert split_key_value(text) == expected
