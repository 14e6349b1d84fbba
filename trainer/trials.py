"""Parallel trials: the oracle that hands trials to G groups, and each group's client of it.

``launch --groups G --workers W`` (or the chart's ``trainer.groups``) runs one oracle process and G
groups of W workers (`trainer.cluster` says who is who). The protocol is KerasTuner's own
distributed tuning (``keras_tuner/src/distribute``): the oracle is a real KerasTuner oracle behind
KerasTuner's ``OracleServicer`` on gRPC, the workers talk to it through KerasTuner's ``OracleClient``
(the ``KERASTUNER_ORACLE_IP/PORT/TUNER_ID`` variables). Every worker of a group uses the group's
tuner id, and ``Oracle.create_trial`` returns the ongoing trial of a tuner id to each caller
(``keras_tuner/src/engine/oracle.py``: "Allow for multi-worker DistributionStrategy within a
Trial"): that is how a restarted group gets its trial back and resumes it from its epoch backup.

Two things KerasTuner leaves to its user (it documents multi-worker trials as unsupported):

- **Which worker asks.** If every worker of a group called ``create_trial`` on its own, a fast
  worker could ask before its group's chief ended the previous trial and be handed that trial
  again; and a worker still finishing a trial could call the oracle after its chief was told that
  the search is over and the oracle had gone (KerasTuner's client then waits an hour). So only the
  group's chief talks to the oracle (``should_report``, as KerasTuner's client already does for
  results); it passes each trial to its group in a collective (`GroupOracleClient.create_trial`),
  which also orders every worker's next request after the chief's ``end_trial``. The other workers
  fetch the trial they were given (the oracle cannot stop while it runs) and nothing else.
- **When the oracle is done.** KerasTuner's ``start_server`` polls every 20 s and stops once no
  trial is running and every tuner it has seen was told to stop, so a group that had not asked yet
  would wait on a dead oracle. `serve_trials` stops when all G groups were told to stop and no
  trial is running, woken by the requests themselves.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from keras_tuner.src import protos
from keras_tuner.src.distribute.oracle_chief import OracleServicer
from keras_tuner.src.distribute.oracle_client import OracleClient
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from trainer.agreement import broadcast_text
from trainer.errors import PeerLostError

if TYPE_CHECKING:
    import keras_tuner as kt
    import tensorflow as tf

    from trainer.cluster import Cluster

__all__ = ["GroupOracleClient", "serve_trials"]

log = logging.getLogger(__name__)

_IDLE_WAIT = 1.0
"""Seconds before asking again when the oracle answers IDLE (it waits for running trials to end)."""


class _Servicer(OracleServicer):  # type: ignore[misc]
    """KerasTuner's servicer, which also notes when every group has been told that the search is over."""

    def __init__(self, oracle: kt.Oracle, groups: int, on_trial_end: Callable[[], None]) -> None:
        super().__init__(oracle)
        self.groups = groups
        self.on_trial_end = on_trial_end
        self.stopped: set[str] = set()
        self.done = threading.Event()
        self.ended = 0
        self._lock = threading.Lock()  # gRPC calls arrive on several threads

    def CreateTrial(self, request: Any, context: Any) -> Any:  # gRPC's method name
        trial = self.oracle.create_trial(request.tuner_id)
        if trial.status == trial_module.TrialStatus.STOPPED:
            with self._lock:
                self.stopped.add(request.tuner_id)
            self._check_done()
        elif trial.status == trial_module.TrialStatus.RUNNING:
            log.info("trial %s to %s: %s", trial.trial_id, request.tuner_id, dict(trial.hyperparameters.values))
        return protos.get_service().CreateTrialResponse(trial=trial.to_proto())

    def EndTrial(self, request: Any, context: Any) -> Any:
        response = super().EndTrial(request, context)
        # Oracle.end_trial saves its state before it lets go of the ongoing trial; in one process the tuner
        # saves again (BaseTuner.on_trial_end). Without this save a restarted oracle would run the trial again.
        self.oracle.save()
        with self._lock:
            self.ended += 1
        self.on_trial_end()
        self._check_done()
        return response

    def _check_done(self) -> None:
        with self._lock:
            if len(self.stopped) >= self.groups and not self.oracle.ongoing_trials:
                self.done.set()


def serve_trials(oracle: kt.Oracle, cluster: Cluster, *, on_trial_end: Callable[[], None] = lambda: None,
                 grace: float = 5.0) -> int:
    """Serve `oracle` to the cluster's groups on ``cluster.oracle``'s port; return when the search is over.

    Over: every one of the ``cluster.groups`` tuner ids was answered STOPPED and no trial is running.
    `on_trial_end` runs after each trial the oracle ended. Returns how many trials ended while serving.
    """
    assert cluster.oracle is not None
    host, port = cluster.oracle.rsplit(":", 1)
    servicer = _Servicer(oracle, cluster.groups, on_trial_end)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tfstack-oracle"))
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    bound = _bind(server, host, port)
    server.start()
    log.info("oracle serving trials to %d groups on %s", cluster.groups, bound)
    try:
        servicer.done.wait()
    finally:
        server.stop(grace).wait()
    log.info("every group was told the search is over; %d trials ended while serving", servicer.ended)
    return servicer.ended


def _bind(server: grpc.Server, host: str, port: str) -> str:
    """Listen on `host` when it is an IP address (the local launcher), else on every interface (a pod)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        candidates = [f"{host}:{port}"]
    except ValueError:  # a DNS name: the pod's own
        candidates = [f"[::]:{port}", f"0.0.0.0:{port}"]
    for address in candidates:
        try:
            if server.add_insecure_port(address):
                return address
        except RuntimeError:  # grpcio raises when the address cannot be bound
            continue
    raise OSError(f"Expected to listen for the groups on port {port}. Received: could not bind {candidates}")


class _BoundedStub:
    """KerasTuner's gRPC stub with our deadline on every call, and an oracle out of reach as `PeerLostError`."""

    def __init__(self, stub: Any, timeout: float, address: str | None) -> None:
        self._stub, self._timeout, self._address = stub, timeout, address

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs["timeout"] = self._timeout  # KerasTuner's client passes an hour (oracle_client.TIMEOUT)
            try:
                return method(request, **kwargs)
            except grpc.RpcError as exc:
                raise PeerLostError(
                    f"Expected the oracle at {self._address} to answer {name} within {self._timeout:.0f}s. Received: "
                    f"{exc.code().name}: {exc.details()}. Restart the group when the oracle is up again."
                ) from exc

        return call


class GroupOracleClient(OracleClient):  # type: ignore[misc]
    """KerasTuner's ``OracleClient`` for one worker of a group: the chief asks, the group follows.

    `timeout` bounds every call to the oracle (waiting for it to come up included): past it the worker
    gives up with `PeerLostError` (exit code 4: restart), where KerasTuner's client would wait an hour.
    """

    def __init__(self, oracle: kt.Oracle, *, cluster: Cluster, strategy: tf.distribute.Strategy,
                 timeout: float) -> None:
        super().__init__(oracle)  # reads KERASTUNER_ORACLE_IP/PORT/TUNER_ID (Cluster.kerastuner_env)
        self.tuner_id = cluster.tuner_id
        self.multi_worker = cluster.num_workers > 1
        self.should_report = cluster.is_chief
        self._strategy = strategy
        self.stub = _BoundedStub(self.stub, timeout, cluster.oracle)
        self._current: trial_module.Trial | None = None

    def create_trial(self, tuner_id: str) -> trial_module.Trial:
        self._current = self._create_trial(tuner_id)
        return self._current

    def _create_trial(self, tuner_id: str) -> trial_module.Trial:
        trial = super().create_trial(tuner_id) if self.should_report else None
        if not self.multi_worker:
            assert trial is not None
            return self._after_idle(trial)
        # Every worker of the group, chief included, learns the chief's answer: "<status> <trial id>".
        answer = broadcast_text(self._strategy, f"{trial.status} {trial.trial_id}" if trial is not None else "")
        status, _, trial_id = answer.partition(" ")
        if trial is None:
            if status == trial_module.TrialStatus.RUNNING:
                trial = self.get_trial(trial_id)
            else:  # STOPPED or IDLE: no trial to fetch (after STOPPED the oracle may already be gone)
                trial = trial_module.Trial(hp_module.HyperParameters(), trial_id=None, status=status)
        return self._after_idle(trial)

    # A worker that does not report asks the oracle for nothing but its trial (see the module docstring).

    def get_trial(self, trial_id: str) -> trial_module.Trial:
        if not self.should_report and self._current is not None and self._current.trial_id == trial_id:
            return self._current
        return super().get_trial(trial_id)

    def update_trial(self, trial_id: str, metrics: dict[str, float], step: int = 0) -> trial_module.Trial:
        if not self.should_report:
            return self.get_trial(trial_id)
        return super().update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial: trial_module.Trial) -> None:
        super().end_trial(trial)  # only the chief's reaches the oracle
        if self.should_report:  # the oracle scored it: show the score where the trial ends
            ended = super().get_trial(trial.trial_id)
            trial.status, trial.score = ended.status, ended.score

    def get_best_trials(self, num_trials: int = 1) -> list[trial_module.Trial]:
        return super().get_best_trials(num_trials) if self.should_report else []

    @staticmethod
    def _after_idle(trial: trial_module.Trial) -> trial_module.Trial:
        if trial.status == trial_module.TrialStatus.IDLE:
            time.sleep(_IDLE_WAIT)  # KerasTuner's loop asks again at once: do not spin on the oracle
        return trial
