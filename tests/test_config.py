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
    ("tracking.job_type=yes", "tracking.job_type", "yes"),
    ("model.name_or_path=1e3", "model.name_or_path", "1e3"),
    ("tracking.group=a #b", "tracking.group", "a #b"),  # no YAML comment either
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
    (
        ["optim.replay_shortcut=true", "dist.world_size=2"],
        "optim.replay_shortcut=true is for one process (dist.world_size=2)",
    ),
    (
        ["optim.replay=last", "optim.replay_shortcut=true", "optim.reuse_dropout_rng=false"],
        "optim.replay_shortcut=true with optim.replay=last needs optim.reuse_dropout_rng=true",
    ),
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


# ---------------------------------------------------------------------------------------------------------------------
# issue 21: what the user typed, refused in one line before anything is written

# item 1: NaN and inf pass every comparison-based range check; the rule refuses them for every float key
NONFINITE = [
    ("optim.rho=nan", "optim.rho=nan is out of range; it must be >= 0 (override 'optim.rho=nan')"),
    ("optim.rho=inf", "optim.rho=inf is out of range; it must be finite and >= 0 (override 'optim.rho=inf')"),
    ("optim.lr=nan", "optim.lr=nan is out of range; it must be > 0"),
    ("optim.lr=inf", "optim.lr=inf is out of range; it must be finite and > 0"),
    ("optim.lr=-inf", "optim.lr=-inf is out of range; it must be finite and > 0"),
    ("optim.max_grad_norm=nan", "optim.max_grad_norm=nan is out of range; it must be > 0 or null"),
    ("optim.warmup_ratio=nan", "optim.warmup_ratio=nan is out of range; it must be in [0, 1]"),
    ("model.dropout=nan", "model.dropout=nan is out of range; it must be in [0, 1) or null"),
    ("optim.eps=nan", "optim.eps=nan is out of range"),
    ("optim.weight_decay=nan", "optim.weight_decay=nan is out of range"),
    ("optim.eta=nan", "optim.eta=nan is out of range"),
    ("dist.timeout_s=nan", "dist.timeout_s=nan is out of range; it must be > 0"),
    ("train.checkpoint_every_minutes=nan", "train.checkpoint_every_minutes=nan is out of range; it must be >= 0"),
    ("data.generated.long_context_frac=nan", "data.generated.long_context_frac=nan is out of range"),
    ("data.generated.unanswerable_frac=NaN", "data.generated.unanswerable_frac=nan is out of range"),
    # keys without a range: the same rule
    ("eval.null_score_diff_threshold=nan", "eval.null_score_diff_threshold=nan is not allowed; it must be a finite"),
    ("eval.null_score_diff_threshold=-inf", "eval.null_score_diff_threshold=-inf is not allowed"),
    ("optim.betas=[0.9, nan]", "optim.betas=[0.9, nan] is not allowed; it must be a finite number"),
]


@pytest.mark.parametrize("override, message", NONFINITE, ids=[o for o, _ in NONFINITE])
def test_nan_and_inf_are_refused_for_every_float_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_float_key_of_the_schema_is_checked_for_nan():
    """No float key escapes the rule (a new key too): each one set to nan is refused, naming that key."""
    from experiments.config import _float_keys
    from experiments.schema import NONFINITE_ALLOWED

    keys = [key for key, _ in _float_keys() if key not in NONFINITE_ALLOWED]
    assert {"optim.rho", "optim.betas", "eval.null_score_diff_threshold", "dist.timeout_s"} <= set(keys)
    for key, is_list in _float_keys():
        with pytest.raises(ConfigError, match=rf"^{key}="):
            load_config([], [f"{key}=[nan, 0.5]" if is_list else f"{key}=nan"])


def test_nan_in_a_yaml_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  rho: nan\n")
    with pytest.raises(ConfigError, match=r"optim.rho=nan is out of range; it must be >= 0 \(config file '.*mine"):
        load_config([path])


def test_cli_refuses_nan_with_exit_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    assert main(tiny_run("sam_full", "optim.rho=nan")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "config error: optim.rho=nan is out of range; it must be >= 0 (override 'optim.rho=nan')"
    ]
    assert not (tmp_path / "runs").exists()


# item 3: OmegaConf's own syntax in an override: one line naming the key and quoting the override
INTERPOLATION = [
    ("run_name=${nope}", "run_name: interpolation ${nope} refers to no key (override 'run_name=${nope}')"),
    ("optim.lr=${optim.nope}", "optim.lr: interpolation ${optim.nope} refers to no key (override 'optim.lr="),
    (
        "tracking.group=${oc.env:NO_SUCH_VAR_21}",
        "tracking.group: interpolation ${oc.env:NO_SUCH_VAR_21} failed: Environment variable 'NO_SUCH_VAR_21' not "
        "found (override 'tracking.group=${oc.env:NO_SUCH_VAR_21}')",
    ),
    ("data.train_file=???", "data.train_file: a value is required; '???' leaves it missing (override"),
    ("seed=???", "seed: a value is required; '???' leaves it missing (override 'seed=???')"),
    ("seed=${optim.lr}", "seed: interpolation ${optim.lr} failed: "),  # 0.001 is no int
]


@pytest.mark.parametrize("override, message", INTERPOLATION, ids=[o for o, _ in INTERPOLATION])
def test_interpolation_and_missing_values_are_one_line_naming_the_key(override, message, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_21", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_working_interpolation_is_resolved_to_its_value(tmp_path):
    cfg = load_config([], ["optim.rho=0.2", "optim.eta=${optim.rho}"])
    assert cfg.optim.eta == 0.2 and not OmegaConf.is_interpolation(cfg.optim, "eta")
    path = tmp_path / "missing.yaml"
    path.write_text("seed: ???\n")
    with pytest.raises(ConfigError, match=r"^seed: a value is required; .* \(config file '.*missing.yaml'\)$"):
        load_config([path])


# item 5: every key that becomes a path component is one plain name (the sweep CLI's rule, config.is_path_name)
@pytest.mark.parametrize(
    "override",
    ["run_name=../../../escaped", "run_name=a/b", "run_name=.", "run_name=..", "run_name=/abs/path", "sweep=../x",
     "sweep=a/b", "sweep=.", "arm=../x"],
)  # fmt: skip
def test_names_that_become_paths_are_one_plain_component(override, tiny_run, tmp_path, capsys):
    key, value = override.split("=", 1)
    with pytest.raises(ConfigError) as info:
        load_config([], [override, "custom_arm=true"])
    assert str(info.value) == (
        f"{key}={value!r} becomes a folder name under results_dir: it must be one plain name of letters, digits, "
        f". _ - (not . or ..) (override {override!r})"
    )
    assert main(tiny_run("sam_full", override)) == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()


def test_the_sweep_cli_and_train_share_the_name_rule():
    from experiments import sweep, sweep_spec
    from experiments.config import is_path_name

    assert sweep.is_path_name is is_path_name and sweep_spec.is_path_name is is_path_name
    assert [is_path_name(n) for n in ("ablation", "run-1.a_b", "0123", ".", "..", "a/b", "", "a b", "x\\y")] == [
        True, True, True, False, False, False, False, False, False,
    ]  # fmt: skip


# item 6: an arm label is one of the table, or declared as one's own with custom_arm=true
def test_an_arm_typo_is_refused_with_the_closest_arm():
    with pytest.raises(ConfigError) as info:
        load_config([REPO / "configs" / "smoke.yaml"], ["arm=sam_lastt"])
    assert str(info.value) == (
        "arm='sam_lastt' is not an arm of the table (adamw, sam_full, sam_last, sam_micro, sam_last_only); did you "
        "mean sam_last? to label optim.replay=full with your own name, add custom_arm=true (override 'arm=sam_lastt')"
    )
    with pytest.raises(ConfigError, match="did you mean sam_last_only"):
        load_config([], ["arm=sam_last_onyl", "optim.replay=last_only"])


def test_a_canonical_arm_without_its_file_names_the_file_and_the_replay_mode():
    with pytest.raises(ConfigError) as info:
        load_config([REPO / "configs" / "smoke.yaml"], ["arm=adamw"])
    assert str(info.value) == (
        "arm='adamw' does not match optim.replay='full' (that is arm 'sam_full'); run it with "
        "configs/arm/adamw.yaml (or optim.replay=none) (override 'arm=adamw')"
    )
    with pytest.raises(ConfigError, match="drop the arm file that sets arm=sam_full"):
        load_config([REPO / "configs" / "arm" / "sam_full.yaml"], ["optim.replay=last_only"])


def test_a_custom_label_is_declared_and_stays_out_of_the_hash():
    from experiments.config import config_hash

    mine = load_config([], ["arm=my_variant", "custom_arm=true", "optim.replay=last"])
    assert (mine.arm, mine.optim.replay) == ("my_variant", "last")
    # the declaration changes nothing computed: same hash as without it (the label itself is hashed, as before)
    plain = load_config([REPO / "configs" / "arm" / "sam_last.yaml"])
    relabelled = load_config([REPO / "configs" / "arm" / "sam_last.yaml"], ["custom_arm=true"])
    assert config_hash(plain) == config_hash(relabelled)
    with pytest.raises(ConfigError, match="does not match"):  # a label of the table must still match its replay
        load_config([], ["arm=sam_last", "custom_arm=true"])


def test_the_shortcut_key_enters_the_hash_only_when_set():
    """optim.replay_shortcut came after the committed runs: false (their value) leaves their ids as they were, true
    is another computation (equal only to rounding for last) and gets its own id."""
    from experiments.config import config_hash

    literal = load_config([REPO / "configs" / "arm" / "sam_last.yaml"])
    data = OmegaConf.to_container(literal, resolve=True)
    del data["optim"]["replay_shortcut"]  # the config as it was before the key existed
    before = OmegaConf.create(data)
    assert config_hash(literal) == config_hash(before)
    short = load_config([REPO / "configs" / "arm" / "sam_last.yaml"], ["optim.replay_shortcut=true"])
    assert config_hash(short) != config_hash(literal)


# item 7: two config files that set one key: the later file wins, and the run says so
def test_the_later_config_file_wins_and_a_note_names_both(tiny_run, tmp_path, capsys):
    smoke, squad = REPO / "configs" / "smoke.yaml", REPO / "configs" / "data" / "squad.yaml"
    notes: list = []
    assert load_config([smoke, squad], notes=notes).data.max_seq_length == 384
    assert (
        f"config: data.max_seq_length=384 from {str(squad)!r} replaces data.max_seq_length=64 from {str(smoke)!r} "
        "(a later config file wins)"
    ) in notes
    notes = []
    assert load_config([squad, smoke], notes=notes).data.max_seq_length == 64
    assert (
        f"config: data.max_seq_length=64 from {str(smoke)!r} replaces data.max_seq_length=384 from {str(squad)!r} "
        "(a later config file wins)"
    ) in notes
    # the base file repeats the schema defaults: a group on top of it replaces no choice, so no note
    notes = []
    load_config([REPO / "configs" / "default.yaml", smoke, REPO / "configs" / "arm" / "adamw.yaml"], notes=notes)
    assert notes == []
    # the CLI prints it
    two = tmp_path / "two.yaml"
    two.write_text("optim:\n  lr: 2.0e-3\n")
    args = tiny_run("sam_full", "train.max_updates=1", "train.epochs=1")
    assert main([*args[:2], str(two), *args[2:]]) == 0
    assert f"config: optim.lr=0.002 from {str(two)!r} replaces optim.lr=0.001 from {str(args[0])!r}" in (
        capsys.readouterr().err
    )


def test_a_key_given_twice_on_the_command_line_says_which_override_won():
    """class 7 among overrides: the later one wins (as in a sweep, where the command line's come after the file's)."""
    notes: list = []
    cfg = load_config([], ["optim.lr=1e-3", "seed=1", "optim.lr=2e-3", "seed=1"], notes=notes)
    assert (cfg.optim.lr, cfg.seed) == (2e-3, 1)
    assert notes == ["config: override 'optim.lr=2e-3' replaces override 'optim.lr=1e-3' (a later override wins)"]
