"""The run configuration: defaults < YAML < flags, spellings and aliases, ranges, lists, and flags_for's round trip."""

from __future__ import annotations

import math
import re

import pytest

from peftbench.config.run_config import FIELDS, RunConfig, build_config, flags_for, load_yaml
from peftbench.errors import ConfigError

pytestmark = pytest.mark.fast


def _values(flags: list[str]) -> dict[str, object]:
    """flags_for's output read back as build_config's flag values: a boolean field's flag stands alone (--no-<flag>
    turns off one that is on by default)."""
    values, tokens = {}, iter(flags)
    for flag in tokens:
        assert flag.startswith("--"), flags
        name = flag[2:].replace("-", "_")
        if name.startswith("no_") and name not in FIELDS:
            assert FIELDS[name[3:]].default is True
            values["--" + flag[5:]] = False
            continue
        values[flag] = True if isinstance(FIELDS[name].default, bool) else next(tokens)
    return values


def test_no_values_give_the_defaults():
    config = build_config({}, {})
    assert config == RunConfig()
    assert config.epochs == FIELDS["epochs"].default and config.methods == ["full", "lora", "ia3"]


def test_yaml_overrides_defaults_and_flags_override_yaml():
    file_values = {"epochs": 5, "seed": 7, "lora_r": 4}
    assert build_config(file_values, {}).epochs == 5
    config = build_config(file_values, {"--epochs": "3", "--lora-alpha": "8"})
    assert (config.epochs, config.seed, config.lora_r, config.lora_alpha) == (3, 7, 4, 8)


def test_a_flag_given_as_none_is_absent():
    assert build_config({"epochs": 5}, {"--epochs": None}).epochs == 5


@pytest.mark.parametrize("key", ["lora_r", "lora-r", "--lora-r", "--lora_r", "lora_rank"])
def test_every_spelling_of_a_key_sets_the_field(key):
    assert build_config({key: 12}, {}).lora_r == 12
    assert build_config({}, {key: "12"}).lora_r == 12


def test_aliases_name_the_same_setting():
    config = build_config({"learning_rate": 3e-4, "num_train_epochs": 4}, {"--gradient-accumulation-steps": "2"})
    assert (config.lr, config.epochs, config.grad_accum) == (3e-4, 4, 2)
    # An alias in the file and the field's own flag: the flag wins, as for any key.
    assert build_config({"learning_rate": 3e-4}, {"--lr": "1e-3"}).lr == 1e-3


def test_two_spellings_that_agree_are_fine():
    assert build_config({"learning_rate": 1e-3, "lr": 1e-3}, {}).lr == 1e-3


@pytest.mark.parametrize(
    ("file_values", "flag_values", "names"),
    [
        ({"learning_rate": 1e-3, "lr": 2e-3}, {}, ("learning_rate", "lr")),
        ({}, {"--learning-rate": "1e-3", "--lr": "2e-3"}, ("--learning-rate", "--lr")),
        ({}, {"num_train_epochs": 2, "epochs": 3}, ("--num-train-epochs", "--epochs")),
    ],
)
def test_two_spellings_that_disagree_are_an_error_naming_both(file_values, flag_values, names):
    with pytest.raises(ConfigError) as error:
        build_config(file_values, flag_values)
    message = str(error.value)
    assert all(name in message for name in names), message
    assert "two names for one setting" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("epochs", 0, "--epochs must be a whole number at least 1, got 0"),
        ("batch_size", -2, "--batch-size must be a whole number at least 1, got -2"),
        ("max_target_tokens", 1, "--max-target-tokens must be a whole number at least 2, got 1"),
        ("warmup_ratio", 1.0, "--warmup-ratio must be a number in [0, 1), got 1.0"),
        ("lora_dropout", -0.1, "--lora-dropout must be a number in [0, 1), got -0.1"),
        ("lr", 0.0, "--lr must be a finite number greater than 0, got 0.0"),
        ("max_grad_norm", math.inf, "--max-grad-norm must be a finite number greater than 0, got inf"),
        ("weight_decay", math.nan, "--weight-decay must be a finite number at least 0, got nan"),
        ("per_device_batch_size", 0, "--per-device-batch-size must be a whole number at least 1, got 0"),
    ],
)
def test_values_out_of_range_name_the_flag_and_the_range(name, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_config({name: value}, {})


def test_values_at_the_edge_of_their_range_are_accepted():
    config = build_config({"epochs": 1, "warmup_ratio": 0.0, "max_target_tokens": 2, "weight_decay": 0}, {})
    assert (config.epochs, config.warmup_ratio, config.max_target_tokens) == (1, 0.0, 2)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"epochs": 2.5}, "epochs must be of type int, got 2.5"),
        ({"epochs": "two"}, "epochs must be of type int, got 'two'"),
        ({"epochs": True}, "epochs must be a number, got True"),
        ({"quiet": "maybe"}, "quiet must be of type bool, got 'maybe'"),
        ({"epochs": None}, "epochs has no value"),
        ({"epoch": 3}, "unknown config key 'epoch'; did you mean 'epochs'?"),
    ],
)
def test_values_of_the_wrong_type_name_the_key(values, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_config(values, {})


def test_whole_floats_and_boolean_words_coerce():
    config = build_config({"epochs": 3.0, "quiet": "yes", "force": "0"}, {"--lr": "5e-4"})
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.quiet is True and config.force is False and config.lr == 5e-4


def test_lists_are_comma_strings_or_yaml_lists():
    assert build_config({}, {"--methods": "full, lora, ia3"}).methods == ["full", "lora", "ia3"]
    assert build_config({"methods": ["lora", "ia3"]}, {}).methods == ["lora", "ia3"]
    assert build_config({}, {"--seeds": "0,1,2"}).seeds == [0, 1, 2]
    assert build_config({"lora_targets": "all"}, {}).lora_targets == ["all-linear"]  # LLaMA-Factory's spelling
    # A regular expression keeps its commas: {1,2} is one pattern, not two targets.
    assert build_config({}, {"--lora-targets": r"h\.[0-9]{1,2}\.attn"}).lora_targets == [r"h\.[0-9]{1,2}\.attn"]


def test_a_number_list_with_a_word_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=re.escape("seeds must be a comma list of integers: 'x' in '0,x'")):
        build_config({}, {"--seeds": "0,x"})
    with pytest.raises(ConfigError, match="--seeds lists a seed twice"):
        build_config({}, {"--seeds": "1,1"})


def test_load_yaml_reads_keys_as_written(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 3e-4\nnum-train-epochs: 4\nmethods: [lora, ia3]\n")
    values = load_yaml(path)
    assert set(values) == {"learning_rate", "num-train-epochs", "methods"}
    config = build_config(values, {"--methods": "full"})
    assert (config.lr, config.epochs, config.methods) == (3e-4, 4, ["full"])


def test_load_yaml_refuses_a_missing_file_and_a_list(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- epochs\n- 3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_per_device_batch_size_times_processes_is_the_global_batch():
    config = build_config({}, {"--per-device-batch-size": "3"}, processes=4)
    assert config.batch_size == 12 and config.per_device_batch_size == 3
    assert config.to_dict()["batch_size_given_as"] == "per_device"
    assert build_config({}, {"--batch-size": "12"}, processes=4).to_dict()["batch_size_given_as"] == "global"
    # The global batch given by itself does not depend on the processes.
    assert build_config({}, {"--batch-size": "12"}, processes=4).batch_size == 12


def test_batch_size_and_per_device_batch_size_exclude_each_other_in_one_source():
    with pytest.raises(ConfigError, match="--per-device-batch-size and --batch-size exclude each other"):
        build_config({}, {"--batch-size": "8", "--per-device-batch-size": "2"})
    # The flag giving one of the pair overrides the file's other one.
    assert build_config({"batch_size": 8}, {"--per-device-batch-size": "2"}, processes=2).batch_size == 4
    assert build_config({"per_device_batch_size": 2}, {"--batch-size": "6"}, processes=2).batch_size == 6


def test_flags_for_defaults_is_empty():
    assert flags_for(RunConfig().to_dict()) == []


def test_flags_for_round_trips_through_build_config():
    config = build_config(
        {
            "learning_rate": 2e-4,
            "epochs": 3,
            "methods": ["lora", "ia3"],
            "seeds": [0, 3],
            "quiet": True,
            "lora_targets": ["c_attn", "c_proj"],
            "max_grad_norm": 0.5,
            "search": ["lr"],
            "lr_grid": [1e-4, 3e-4],
            "search_halving": False,
            "search_trials": 4,
        },
        {},
    )
    flags = flags_for(config.to_dict())
    assert "--quiet" in flags and "--lr" in flags and "--epochs" in flags
    assert "--no-search-halving" in flags and RunConfig().search_halving  # halving is on unless turned off
    assert "--force" not in flags  # a boolean at its default gives no flag
    assert build_config({}, _values(flags)) == config


def test_flags_for_round_trips_a_per_device_batch_size():
    config = build_config({}, {"--per-device-batch-size": "2", "--epochs": "1"}, processes=3)
    flags = flags_for(config.to_dict())
    assert "--batch-size" not in flags and "--per-device-batch-size" in flags  # batch_size is derived from it
    assert build_config({}, _values(flags), processes=3) == config


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"retention_task": "embedded-qq"}, ["'embedded-qq'", "embedded-qa"]),
        ({"retention_task": "embedded"}, ["'embedded'", "embedded-qa", "not the data trained on"]),
        ({"retention": "wiki"}, ["--retention", "wikipedia", "none"]),
        ({"retention": "none", "retention_data": "x.txt"}, ["--retention none", "give one"]),
        ({"retention_column": "text"}, ["--retention-column", "--retention-data"]),
        ({"retention_data": " "}, ["--retention-data is empty"]),
        ({"retention_size": 1}, ["--retention-size", "at least 2"]),
    ],
)
def test_bad_retention_settings_are_named(values, expected):
    with pytest.raises(ConfigError) as error:
        RunConfig(**values).validate()
    assert all(part in str(error.value) for part in expected), str(error.value)


def test_the_retention_task_is_scored_as_its_own_task_on_this_runs_model_and_budget():
    config = RunConfig(retention_task="embedded-qa", retention_size=40, max_new_tokens=12, metrics=["rouge1"])
    other = config.for_retention_task()
    assert (other.dataset, other.task, other.metrics, other.primary_metric) == (
        "embedded-qa",
        "qa",
        ["exact_match", "f1"],
        "f1",
    )
    assert (other.test_size, other.train_size, other.max_new_tokens, other.model) == (40, 0, 12, config.model)
    assert other.retention == "none" and other.retention_task is None


def test_method_args_from_a_flag_read_each_value_as_yaml():
    given = "lora.r=16,lora.init_lora_weights=olora,lora.layers_to_transform=[0, 1],vera.d_initial=0.1"
    assert build_config({}, {"--method-args": given}).method_args == {
        "lora": {"r": 16, "init_lora_weights": "olora", "layers_to_transform": [0, 1]},
        "vera": {"d_initial": 0.1},
    }
    assert build_config({"method_args": {"oft": {"r": 0}}}, {}).method_args == {"oft": {"r": 0}}
    with pytest.raises(ConfigError, match="a bracket is not closed"):
        build_config({}, {"--method-args": "lora.layers_to_transform=[0,"})
    with pytest.raises(ConfigError, match="does not read as YAML"):
        build_config({}, {"--method-args": "lora.init_lora_weights=: x"})
