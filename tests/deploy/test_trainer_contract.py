"""The exit-code contract the chart relies on (tests/deploy/trainer_contract.py) against the trainer's
own constants, where the trainer names them (``EXIT_*`` integers in trainer.cli or trainer.errors): a
code the trainer changes must change the chart's failure policies too."""

from __future__ import annotations

import importlib

import pytest

from tests.deploy.trainer_contract import EXIT_CODES

#: Words in a constant's name and the contract entry they mean.
MEANINGS = {"PUBLISH": "notPublished", "PEER": "peerLost", "GROUP": "peerLost", "CONFIG": "badInput",
            "USAGE": "badInput", "INPUT": "badInput", "CRASH": "crash", "OK": "done", "DONE": "done"}


def _trainer_exit_constants() -> dict[str, int]:
    found = {}
    for name in ("trainer.cli", "trainer.errors"):
        module = importlib.import_module(name)
        found.update({k: v for k, v in vars(module).items() if k.startswith("EXIT_") and isinstance(v, int)})
    return found


def test_should_agree_with_the_trainer_when_it_names_its_exit_codes() -> None:
    constants = _trainer_exit_constants()
    if not constants:
        pytest.skip("the trainer names no EXIT_* constants (yet)")
    assert set(constants.values()) <= set(EXIT_CODES.values()), constants
    for name, value in constants.items():
        words = name.removeprefix("EXIT_").split("_")
        meanings = {meaning for key, meaning in MEANINGS.items() if any(w.startswith(key) for w in words)}
        for meaning in meanings:
            assert EXIT_CODES[meaning] == value, f"{name}={value}, the contract says {meaning}={EXIT_CODES[meaning]}"
