"""The trainer config: precedence file < env < CLI, typed parsing, and unknown settings rejected."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from trainer.config import SearchConfig, add_arguments, from_namespace, load
from trainer.errors import ConfigError


def test_defaults_serve_the_embedded_digits() -> None:
    config = load({}, {})
    assert config.data is None and config.model_name == "digits" and config.export_base == Path("models")
    assert config.backbones == ("small_cnn",) and config.flip == "none" and config.epochs is None


def test_defaults_for_a_user_folder_use_transfer_learning() -> None:
    config = load({"data": "photos"}, {})
    assert config.backbones == ("mobilenet_v2",) and config.weights == "imagenet"
    assert config.flip == "none", "a flip would merge mirror-image classes"
    assert config.model_name == "photos", "a user's data set never resumes the digits search"


def test_auto_backbone_trains_small_cnn_from_scratch_and_fine_tunes_mobilenet_with_weights(tmp_path: Path) -> None:
    assert load({"data": "photos", "weights": "none"}, {}).backbones == ("small_cnn",)
    assert load({"data": "photos", "weights": str(tmp_path / "w.weights.h5")}, {}).backbones == ("mobilenet_v2",)
    assert load({"weights": "imagenet"}, {}).backbones == ("small_cnn",), "the 8x8 digits stay on small_cnn"


@pytest.mark.parametrize(("trials", "initial"), [(8, 2), (9, 3), (30, 10), (1, 2)], ids=str)
def test_bayesian_search_is_not_all_random_by_default(trials: int, initial: int) -> None:
    config = load({"max_trials": str(trials)}, {})
    assert config.bayesian_initial_trials == initial
    assert load({"max_trials": str(trials), "initial_trials": "5"}, {}).bayesian_initial_trials == 5


def test_unfreeze_depths_are_fractions_of_the_backbone() -> None:
    assert load({}, {}).unfreeze_depths == (0.0, 0.25, 0.5, 1.0)
    with pytest.raises(ConfigError, match="fractions of the backbone"):
        load({"unfreeze_depths": "0,20,60"}, {})


def test_precedence_is_file_then_env_then_cli(tmp_path: Path) -> None:
    settings = tmp_path / "search.json"
    settings.write_text(json.dumps({"max-trials": 3, "tuner": "random", "epochs": 7, "model_name": "a"}))
    env = {"TFSTACK_MAX_TRIALS": "5", "TFSTACK_TUNER": "hyperband", "TFSTACK_EXPORT_BASE": "/models"}
    config = load({"max_trials": "9"}, env, settings)
    assert config.max_trials == 9  # CLI beats env and file
    assert config.tuner == "hyperband"  # env beats file
    assert config.epochs == 7 and config.model_name == "a"  # file beats defaults
    assert config.export_base == Path("/models")


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    settings = tmp_path / "s.json"
    settings.write_text('{"seed": 7}')
    assert load({}, {"TFSTACK_CONFIG": str(settings)}).seed == 7


def test_lists_and_booleans_parse_from_strings() -> None:
    config = load({}, {"TFSTACK_BACKBONE": "mobilenet_v2, vgg16", "TFSTACK_UNFREEZE_DEPTHS": "0,0.5",
                       "TFSTACK_OVERWRITE": "yes", "TFSTACK_METRICS_PORT": "9100"})
    assert config.backbones == ("mobilenet_v2", "vgg16") and config.unfreeze_depths == (0.0, 0.5)
    assert config.overwrite is True and config.metrics_port == 9100


@pytest.mark.parametrize(
    ("cli", "env", "fragment"),
    [
        ({}, {"TFSTACK_MAX_TRIAL": "3"}, "TFSTACK_MAX_TRIAL"),
        ({"backbone": "resnet9000"}, {}, "resnet9000"),
        ({"tuner": "grid"}, {}, "tuner"),
        ({"max_trials": "many"}, {}, "max_trials"),
        ({"max_trials": "0"}, {}, "max_trials >= 1"),
        ({"val_fraction": "1.5"}, {}, "val_fraction"),
        ({}, {"TFSTACK_OVERWRITE": "maybe"}, "TFSTACK_OVERWRITE"),
        ({"model_name": "a/b"}, {}, "model name"),
        ({"backbone": "auto,vgg16"}, {}, "'auto' alone"),
        ({}, {"TFSTACK_PATIENCE_STEPS": "-1"}, "patience_steps >= 0"),
        ({"min_steps": "-5"}, {}, "min_steps >= 0"),
    ],
    ids=["unknown-env", "unknown-backbone", "unknown-tuner", "not-int", "zero-trials", "fraction",
         "bad-bool", "slash-in-name", "auto-and-named", "negative-patience-steps", "negative-min-steps"],
)
def test_bad_values_name_the_setting(cli: dict[str, str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(cli, env)
    assert fragment in str(info.value)


def test_unknown_file_keys_are_listed(tmp_path: Path) -> None:
    settings = tmp_path / "s.json"
    settings.write_text('{"max_trails": 3, "epochs": 2}')
    with pytest.raises(ConfigError, match=r"\['max_trails'\]"):
        load({}, {}, settings)


def test_malformed_config_file_is_a_config_error(tmp_path: Path) -> None:
    settings = tmp_path / "s.json"
    settings.write_text("{epochs: 2")
    with pytest.raises(ConfigError, match="valid json"):
        load({}, {}, settings)


def test_cluster_variables_are_not_unknown_settings() -> None:
    assert load({}, {"TFSTACK_CLUSTER_WORKERS": "2", "TFSTACK_CLUSTER_PORT": "2222"}) == SearchConfig()


def test_cli_flags_cover_every_field() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--max-trials", "2", "--no-overwrite", "--backbone", "vgg16", "--image-size", "64"])
    config = from_namespace(args, env={"TFSTACK_OVERWRITE": "true"})
    assert config.max_trials == 2 and config.overwrite is False and config.backbones == ("vgg16",)
    assert config.image_size == 64


def test_cache_defaults_to_auto_and_reads_the_flag_and_the_environment(tmp_path: Path) -> None:
    assert load({}, {}).cache == "auto"
    assert load({}, {"TFSTACK_CACHE": "none"}).cache == "none"
    assert load({"cache": "memory"}, {"TFSTACK_CACHE": "none"}).cache == "memory"
    target = tmp_path / "not-yet" / "cache"  # created when the pipeline is built
    assert load({"cache": str(target)}, {}).cache == str(target)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_namespace(parser.parse_args(["--cache", str(tmp_path)]), {}).cache == str(tmp_path)


@pytest.mark.parametrize("case", ["file", "under-a-file", "empty"], ids=str)
def test_a_cache_that_is_no_usable_directory_names_the_flag(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "cache.bin"
    blocker.write_text("")
    value = {"file": str(blocker), "under-a-file": str(blocker / "sub"), "empty": " "}[case]
    with pytest.raises(ConfigError, match=r"--cache \(TFSTACK_CACHE\).*auto, memory, none or a writable"):
        load({}, {"TFSTACK_CACHE": value})
