import math

import pytest

from dlscale.training import config
from dlscale.training.config import TrainConfig
from dlscale.errors import UserError


def test_defaults_train_the_cnn_on_digits():
    c = TrainConfig()
    assert (c.model, c.data, c.batch_size, c.optimizer) == ("cnn", "digits", 64, "adamw")


def test_toml_values_then_flags_win(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "mlp"\nbatch_size = 32\nlr = 0.01\n')
    c = config.build(config.read_toml(path), batch_size=16)
    assert (c.model, c.batch_size, c.lr) == ("mlp", 16, 0.01)


def test_hyphenated_keys_are_accepted(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batch-size = 8\n")
    assert config.build(config.read_toml(path)).batch_size == 8


def test_epochs_flag_beats_max_steps_from_file():
    c = config.build({"max_steps": 10}, epochs=3)
    assert c.max_steps is None and c.epochs == 3


def test_integer_lr_is_accepted_as_float():
    assert config.build({"lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"epochs": -2}, "--epochs must be at least 1"),
        ({"lr": math.nan}, "--lr must be a finite number"),
        ({"lr": -0.1}, "--lr must be greater than 0"),
        ({"batch_size": "64"}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"compile": "yes"}, "compile must be true or false"),
        ({"optimizer": "lamb"}, "--optimizer must be one of adamw, sgd"),
        ({"precision": "fp8"}, "--precision must be one of"),
        ({"target_accuracy": 1.5}, "--target-accuracy is a fraction"),
        ({"max_requeues": -1}, "--max-requeues must be 0 or more"),
        ({"val_samples": 0}, "--val-samples must be at least 1"),
        ({"batch_size": 10, "grad_accum": 3}, "does not split into --grad-accum 3"),
    ],
)
def test_bad_values_are_refused_by_name(values, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        TrainConfig(**values)


def test_unknown_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batchsize = 8\n")
    with pytest.raises(UserError, match="unknown key 'batchsize'.*batch_size"):
        config.read_toml(path)


def test_toml_dict_drops_unset_and_invocation_keys():
    c = TrainConfig(run_dir="x", resume="auto")
    written = config.to_toml_dict(c)
    assert "run_dir" not in written and "resume" not in written and "lr" not in written
    assert config.build(written) == c.replace(run_dir=None, resume=None)


@pytest.mark.parametrize("seed", [20_000_000_000_000, -1, 2**32, 2**63, 2**64])
def test_seed_outside_what_every_generator_takes_is_refused_with_the_range(seed):
    with pytest.raises(UserError, match=rf"^--seed must be from 0 to 4294967295 \(2\*\*32 - 1\), got {seed}$"):
        TrainConfig(seed=seed)


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_range_ends_are_accepted(seed):
    assert TrainConfig(seed=seed).seed == seed


def test_a_bad_new_cluster_flag_is_one_error_line_exit_2(capsys):
    from dlscale.cli import main

    assert main(["train", "--max-requeues", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --max-requeues must be 0 or more, got -1"]
