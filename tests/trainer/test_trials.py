"""The oracle of parallel trial groups, served and called with KerasTuner's own gRPC service and client.

The oracle is a real KerasTuner ``RandomSearchOracle``; the clients are KerasTuner's ``OracleClient``
(``keras_tuner/src/distribute/oracle_client.py``) on a real loopback port, as the groups' chiefs use
them. What the tests expect comes from KerasTuner's ``Oracle`` (``engine/oracle.py``): one ongoing
trial per tuner id, ``STOPPED`` once ``max_trials`` have been created.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import keras_tuner as kt
import pytest
import tensorflow as tf
from keras_tuner.src.distribute.oracle_client import OracleClient
from keras_tuner.src.engine import trial as trial_module

from trainer.agreement import broadcast_text
from trainer.cluster import Cluster
from trainer.errors import PeerLostError
from trainer.launch import free_ports
from trainer.trials import GroupOracleClient, serve_trials


def _oracle(directory: Path, max_trials: int) -> kt.Oracle:
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials,
                                           seed=1)
    oracle._set_project_dir(str(directory), "search")
    space = kt.HyperParameters()
    space.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    space.Choice("head", ["gap_dense", "flatten_dense_dropout"])
    oracle.update_space(space)
    return oracle


class _Served:
    """`serve_trials` running in a thread for `groups` groups, and KerasTuner clients for them."""

    def __init__(self, oracle: kt.Oracle, groups: int, monkeypatch: pytest.MonkeyPatch) -> None:
        (port,) = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        self.cluster = Cluster(peers=(), rank=0, source="oracle", role="oracle", groups=groups, oracle=self.address)
        self.ended: list[int] = []
        self.returned: list[int] = []
        self.thread = threading.Thread(target=self._serve, args=(oracle,), daemon=True)
        self.thread.start()
        self.monkeypatch = monkeypatch

    def _serve(self, oracle: kt.Oracle) -> None:
        self.returned.append(serve_trials(oracle, self.cluster, on_trial_end=lambda: self.ended.append(1), grace=1))

    def client(self, tuner_id: str) -> OracleClient:
        worker = Cluster(peers=(), rank=0, source="single", group=int(tuner_id.removeprefix("group")),
                         groups=self.cluster.groups, oracle=self.address)
        for name, value in worker.kerastuner_env().items():
            self.monkeypatch.setenv(name, value)
        return OracleClient(_oracle(Path("/nonexistent"), 1))  # the local oracle of a worker is never asked


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Served, kt.Oracle]]:
    oracle = _oracle(tmp_path, max_trials=3)
    run = _Served(oracle, 2, monkeypatch)
    yield run, oracle
    run.thread.join(timeout=30)


def _finish(client: OracleClient, trial: trial_module.Trial, accuracy: float) -> None:
    client.update_trial(trial.trial_id, {"val_accuracy": accuracy}, step=0)
    trial.status = trial_module.TrialStatus.COMPLETED
    client.end_trial(trial)


def _answers(address: str) -> bool:
    """Whether the oracle answers a call now (no waiting for a server that is not there)."""
    from keras_tuner.src import protos

    with grpc.insecure_channel(address) as channel:
        stub = protos.get_service_grpc().OracleStub(channel)
        try:
            stub.GetBestTrials(protos.get_service().GetBestTrialsRequest(num_trials=1), timeout=5)
        except grpc.RpcError:
            return False
    return True


def test_the_oracle_serves_until_every_group_was_told_to_stop_and_no_trial_runs(
    served: tuple[_Served, kt.Oracle], tmp_path: Path
) -> None:
    run, oracle = served
    group0, group1 = run.client("group0"), run.client("group1")
    first = group0.create_trial("group0")
    assert first.status == "RUNNING"
    # A restarted group asks again with its tuner id and gets its ongoing trial back (KerasTuner's Oracle).
    assert run.client("group0").create_trial("group0").trial_id == first.trial_id
    second = group1.create_trial("group1")
    assert second.trial_id != first.trial_id
    _finish(group0, first, 0.5)
    third = group0.create_trial("group0")
    _finish(group0, third, 0.7)
    assert group0.create_trial("group0").status == "STOPPED"  # max_trials=3 created
    # group1 still runs a trial and was not told: the oracle must stay up for it.
    assert _answers(run.address) and run.thread.is_alive()
    _finish(group1, second, 0.9)
    assert group1.create_trial("group1").status == "STOPPED"
    run.thread.join(timeout=30)
    assert not run.thread.is_alive() and run.returned == [3] and len(run.ended) == 3
    assert [t.trial_id for t in oracle.get_best_trials(3)] == [second.trial_id, third.trial_id, first.trial_id]

    # The state on disk lets a restarted oracle go on without running a finished trial again.
    reloaded = _oracle(tmp_path, max_trials=3)
    reloaded.reload()
    assert sorted(reloaded.end_order) == sorted({first.trial_id, second.trial_id, third.trial_id})
    assert reloaded.ongoing_trials == {} and reloaded._retry_queue == []
    assert reloaded.create_trial("group0").status == "STOPPED"


def test_a_group_that_never_asked_keeps_the_oracle_up(served: tuple[_Served, kt.Oracle]) -> None:
    run, _ = served
    group0 = run.client("group0")
    for _ in range(3):
        trial = group0.create_trial("group0")
        _finish(group0, trial, 0.5)
    assert group0.create_trial("group0").status == "STOPPED"
    assert _answers(run.address) and run.thread.is_alive()  # group1 has not been told yet
    assert run.client("group1").create_trial("group1").status == "STOPPED"
    run.thread.join(timeout=30)
    assert not run.thread.is_alive()


def test_a_group_chief_gives_up_on_an_unreachable_oracle_with_exit_code_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    cluster = Cluster(peers=(), rank=0, source="single", group=1, groups=2, oracle=f"127.0.0.1:{port}")
    for name, value in cluster.kerastuner_env().items():
        monkeypatch.setenv(name, value)
    client = GroupOracleClient(_oracle(tmp_path, 1), cluster=cluster, strategy=tf.distribute.get_strategy(),
                               timeout=1.0)
    with pytest.raises(PeerLostError, match=f"oracle at 127.0.0.1:{port} to answer CreateTrial within 1s") as caught:
        client.create_trial("group1")
    assert caught.value.exit_code == 4


def test_broadcast_text_round_trips_on_one_replica() -> None:
    strategy = tf.distribute.get_strategy()
    assert broadcast_text(strategy, "RUNNING 07") == "RUNNING 07"
    assert broadcast_text(strategy, "") == ""
    assert broadcast_text(strategy, "é" * 10) == "é" * 10
    with pytest.raises(ValueError, match="at most 256 bytes"):
        broadcast_text(strategy, "x" * 257)


def test_hyperband_with_several_groups_is_refused_before_any_work(tmp_path: Path) -> None:
    from trainer.config import load
    from trainer.errors import ConfigError
    from trainer.search import run_search

    config = load({"tuner": "hyperband", "data": str(tmp_path / "absent"), "run_dir": str(tmp_path)}, {})
    worker = Cluster(peers=(), rank=0, source="single", group=0, groups=2, oracle="127.0.0.1:1")
    with pytest.raises(ConfigError, match="--tuner bayesian or random with parallel trial groups") as caught:
        run_search(config, worker)  # the data folder does not exist: refused before the scan
    assert caught.value.exit_code == 2
