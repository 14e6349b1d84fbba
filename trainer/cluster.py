"""Where this process sits in the training cluster: its peers and its rank.

Pure Python with no TensorFlow import, so chart tests can feed a rendered pod environment to
`resolve` and check the cluster it builds. Sources, first match wins:

1. ``TF_CONFIG``: the JSON that Kubeflow's TFJob and most launchers set::

       {"cluster": {"chief": ["a:2222"], "worker": ["b:2222", "c:2222"]},
        "task": {"type": "worker", "index": 0}}

   A separate ``chief`` task is rank 0; without one, ``worker`` 0 is the chief (as in
   ``MultiWorkerMirroredStrategy``).
2. A Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` (set by Kubernetes) plus
   ``TFSTACK_CLUSTER_WORKERS``, ``TFSTACK_CLUSTER_JOB_NAME``, ``TFSTACK_CLUSTER_SERVICE``,
   ``TFSTACK_CLUSTER_PORT`` and optional ``TFSTACK_CLUSTER_DOMAIN``. Pod ``i`` is reachable as
   ``<job>-<i>.<service>[.<domain>]:<port>`` through the headless Service; index 0 is the chief.
3. Neither: a single process.

Parallel trials (``launch --groups G``, the chart's ``trainer.groups``): the search runs as G groups
of W workers plus one oracle process. Each group is one synchronous job (its own TF_CONFIG or
Indexed Job, as above) that takes one trial at a time from the oracle, KerasTuner's chief oracle
served over gRPC. Four more variables say where a process sits:

- ``TFSTACK_ROLE``: ``worker`` (default) or ``oracle`` (the one process that serves trials, then
  evaluates and publishes the best model; it ignores the cluster variables above).
- ``TFSTACK_GROUPS``: G, the number of groups (default 1: no oracle, the search as one job).
- ``TFSTACK_GROUP``: this worker's group, ``0..G-1``. In an Indexed Job it also names the group's
  Job: pod ``i`` of group ``g`` is ``<job>-<g>-<i>.<service>`` (a JobSet's child Jobs are named
  ``<jobset>-<replicatedJob>-<g>``); Kubernetes sets it from the JobSet's job-index annotation.
- ``TFSTACK_ORACLE``: ``host:port`` of the oracle (required with G > 1).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.errors import ClusterError

__all__ = [
    "GROUP_VARIABLES",
    "INDEXED_JOB_VARIABLES",
    "Cluster",
    "local_tf_configs",
    "resolve",
]

INDEXED_JOB_VARIABLES = (
    "TFSTACK_CLUSTER_WORKERS",
    "TFSTACK_CLUSTER_JOB_NAME",
    "TFSTACK_CLUSTER_SERVICE",
    "TFSTACK_CLUSTER_PORT",
    "TFSTACK_CLUSTER_DOMAIN",
)
GROUP_VARIABLES = ("TFSTACK_ROLE", "TFSTACK_GROUPS", "TFSTACK_GROUP", "TFSTACK_ORACLE")
ORACLE_TUNER_ID = "chief"
"""KerasTuner's tuner id of the chief oracle (``keras_tuner/src/distribute/utils.py``: ``is_chief_oracle``)."""
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[^:\s/]+):(?P<port>\d+)$")


@dataclass(frozen=True)
class Cluster:
    """The workers of one synchronous training job, as this process sees them."""

    peers: tuple[str, ...]
    """``host:port`` of every worker in rank order (rank 0 is the chief); empty for one process."""
    rank: int
    """This process's index into `peers` (0 for a single process)."""
    source: str
    """Where the settings came from: ``tf_config``, ``indexed_job`` or ``single``."""
    chief_in_tf_config: bool = False
    """TF_CONFIG named a separate ``chief`` task (then ``peers[0]`` is that chief)."""
    role: str = "worker"
    """``worker`` (trains) or ``oracle`` (serves trials to the groups, then publishes)."""
    group: int = 0
    """This worker's group (one synchronous job of `peers`), ``0..groups-1``."""
    groups: int = 1
    """How many groups train trials in parallel; 1 = no oracle process."""
    oracle: str | None = None
    """``host:port`` of the oracle process when ``groups > 1``."""

    @property
    def is_oracle(self) -> bool:
        return self.role == "oracle"

    @property
    def is_chief(self) -> bool:
        """Rank 0 of its group: writes its trials' checkpoints, backups and logs to the shared run directory."""
        return self.rank == 0 and not self.is_oracle

    @property
    def publishes(self) -> bool:
        """This process evaluates and exports the best model: the oracle, or the chief of the only group."""
        return self.is_oracle or (self.groups == 1 and self.is_chief)

    @property
    def tuner_id(self) -> str:
        """KerasTuner's tuner id: one per group (its workers run the same trial), ``chief`` for the oracle."""
        return ORACLE_TUNER_ID if self.is_oracle else f"group{self.group}"

    def kerastuner_env(self) -> dict[str, str]:
        """The variables with which KerasTuner's tuners talk to the chief oracle (none with one group).

        Not for the oracle itself: with them, ``BaseTuner.search`` would run KerasTuner's own server loop.
        """
        if self.groups == 1 or self.is_oracle or self.oracle is None:
            return {}
        match = _ADDRESS.match(self.oracle)
        assert match is not None  # checked by resolve
        return {"KERASTUNER_ORACLE_IP": match["host"].strip("[]"), "KERASTUNER_ORACLE_PORT": match["port"],
                "KERASTUNER_TUNER_ID": self.tuner_id}

    @property
    def num_workers(self) -> int:
        return max(1, len(self.peers))

    @property
    def task(self) -> tuple[str, int]:
        """This process's ``(type, index)`` in TF_CONFIG terms."""
        if self.chief_in_tf_config:
            return ("chief", 0) if self.rank == 0 else ("worker", self.rank - 1)
        return ("worker", self.rank)

    def tf_config(self) -> dict[str, Any] | None:
        """The TF_CONFIG that TensorFlow expects for this process, or None for a single process."""
        if not self.peers:
            return None
        if self.chief_in_tf_config:
            spec: dict[str, list[str]] = {"chief": [self.peers[0]], "worker": list(self.peers[1:])}
            if not spec["worker"]:
                del spec["worker"]
        else:
            spec = {"worker": list(self.peers)}
        task_type, index = self.task
        return {"cluster": spec, "task": {"type": task_type, "index": index}}

    def describe(self) -> str:
        """One log line: who am I, among how many."""
        if self.is_oracle:
            return f"oracle of {self.groups} groups, serving trials on {self.oracle}"
        in_group = f" of group {self.group} of {self.groups} (oracle {self.oracle})" if self.groups > 1 else ""
        if not self.peers:
            return f"single process{in_group or ' (no TF_CONFIG, no Indexed-Job variables)'}"
        role = "chief" if self.is_chief else "worker"
        return f"{role}, rank {self.rank} of {self.num_workers}{in_group} (from {self.source}): {', '.join(self.peers)}"


def resolve(env: Mapping[str, str]) -> Cluster:
    """Build the cluster from `env` (TF_CONFIG, else Indexed-Job variables, else single process).

    Raises:
        ClusterError: the settings are present but invalid; the message names the variable.
    """
    role, group, groups, oracle = _group_settings(env)
    placement = {"role": role, "group": group, "groups": groups, "oracle": oracle}
    if role == "oracle":
        return Cluster(peers=(), rank=0, source="oracle", **placement)
    if env.get("TF_CONFIG", "").strip():
        return dataclasses.replace(_from_tf_config(env["TF_CONFIG"]), **placement)
    if "JOB_COMPLETION_INDEX" in env or any(name in env for name in INDEXED_JOB_VARIABLES):
        return dataclasses.replace(_from_indexed_job(env, group if "TFSTACK_GROUP" in env else None), **placement)
    return Cluster(peers=(), rank=0, source="single", **placement)


def _group_settings(env: Mapping[str, str]) -> tuple[str, int, int, str | None]:
    """(role, group, groups, oracle address) from the TFSTACK_ROLE/GROUPS/GROUP/ORACLE variables."""
    role = env.get("TFSTACK_ROLE", "").strip() or "worker"
    if role not in ("worker", "oracle"):
        raise ClusterError(f"Expected TFSTACK_ROLE to be 'worker' or 'oracle'. Received: TFSTACK_ROLE={role!r}")
    groups = _integer(env, "TFSTACK_GROUPS", 1) if env.get("TFSTACK_GROUPS", "").strip() else 1
    group = _integer(env, "TFSTACK_GROUP", 0, groups - 1) if env.get("TFSTACK_GROUP", "").strip() else None
    oracle = env.get("TFSTACK_ORACLE", "").strip() or None
    if groups == 1:
        if role == "oracle":
            raise ClusterError("Expected TFSTACK_GROUPS > 1 with TFSTACK_ROLE=oracle (one group needs no oracle). "
                               f"Received: TFSTACK_GROUPS={env.get('TFSTACK_GROUPS')!r}")
        return role, group or 0, 1, None
    if oracle is None:
        raise ClusterError(f"Expected TFSTACK_ORACLE (the oracle's host:port) with TFSTACK_GROUPS={groups}. "
                           "Received: TFSTACK_ORACLE unset")
    _check_addresses([oracle], "TFSTACK_ORACLE")
    if role == "worker" and group is None:
        raise ClusterError(f"Expected TFSTACK_GROUP (this worker's group, 0..{groups - 1}) with "
                           f"TFSTACK_GROUPS={groups}. Received: TFSTACK_GROUP unset")
    return role, group or 0, groups, oracle


def _integer(env: Mapping[str, str], name: str, low: int, high: int | None = None) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ClusterError(f"Expected {name} to be an integer. Received: {name}={raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ClusterError(f"Expected {name} {bound}. Received: {name}={value}")
    return value


def local_tf_configs(ports: Sequence[int], host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """TF_CONFIG for each of ``len(ports)`` local workers; worker 0 is the chief."""
    peers = tuple(f"{host}:{port}" for port in ports)
    _check_addresses(peers, "ports")
    configs = [Cluster(peers=peers, rank=rank, source="tf_config").tf_config() for rank in range(len(peers))]
    return [config for config in configs if config is not None]


def _from_tf_config(raw: str) -> Cluster:
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"Expected TF_CONFIG to be JSON. Received: TF_CONFIG={raw!r} ({exc.msg})") from exc
    if not isinstance(config, dict):
        raise ClusterError(f"Expected TF_CONFIG to be a JSON object. Received: TF_CONFIG={raw!r}")
    spec = config.get("cluster")
    task = config.get("task")
    if not isinstance(spec, dict) or not spec:
        raise ClusterError(f"Expected TF_CONFIG to have a non-empty 'cluster' object. Received: TF_CONFIG={raw!r}")
    if not isinstance(task, dict):
        raise ClusterError(f"Expected TF_CONFIG to have a 'task' object. Received: TF_CONFIG={raw!r}")
    unsupported = sorted(set(spec) - {"chief", "worker", "evaluator"})
    if unsupported:
        raise ClusterError(
            "Expected TF_CONFIG cluster task types among chief, worker (and evaluator, which tfstack "
            f"does not run). Received: TF_CONFIG cluster types {unsupported}"
        )
    for key in ("chief", "worker"):
        if key in spec and (
            not isinstance(spec[key], list) or not all(isinstance(a, str) for a in spec[key])
        ):
            raise ClusterError(
                f"Expected TF_CONFIG cluster.{key} to be a list of 'host:port' strings. "
                f"Received: {spec[key]!r}"
            )
    chiefs: list[str] = spec.get("chief", [])
    workers: list[str] = spec.get("worker", [])
    if len(chiefs) > 1:
        raise ClusterError(f"Expected at most one chief in TF_CONFIG. Received: cluster.chief={chiefs}")
    peers = tuple(chiefs + workers)
    if not peers:
        raise ClusterError(f"Expected TF_CONFIG to list at least one chief or worker. Received: {raw!r}")
    _check_addresses(peers, "TF_CONFIG")

    task_type = task.get("type")
    index = task.get("index", 0)
    if task_type not in ("chief", "worker"):
        raise ClusterError(
            f"Expected TF_CONFIG task.type to be 'chief' or 'worker'. Received: task.type={task_type!r}"
        )
    if not isinstance(index, int) or isinstance(index, bool):
        raise ClusterError(f"Expected TF_CONFIG task.index to be an integer. Received: task.index={index!r}")
    members = chiefs if task_type == "chief" else workers
    if not 0 <= index < len(members):
        raise ClusterError(
            f"Expected TF_CONFIG task.index in [0, {len(members)}) for task type {task_type!r}. "
            f"Received: task.index={index}"
        )
    rank = index if task_type == "chief" else len(chiefs) + index
    return Cluster(peers=peers, rank=rank, source="tf_config", chief_in_tf_config=bool(chiefs))


def _from_indexed_job(env: Mapping[str, str], group: int | None) -> Cluster:
    def required(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise ClusterError(
                f"Expected {name} to be set for an Indexed-Job cluster (found "
                f"{', '.join(n for n in ('JOB_COMPLETION_INDEX', *INDEXED_JOB_VARIABLES) if n in env)}). "
                f"Received: {name}={env.get(name)!r}"
            )
        return value

    def integer(name: str, low: int, high: int | None = None) -> int:
        required(name)
        return _integer(env, name, low, high)

    workers = integer("TFSTACK_CLUSTER_WORKERS", 1)
    index = integer("JOB_COMPLETION_INDEX", 0, workers - 1)
    port = integer("TFSTACK_CLUSTER_PORT", 1, 65535)
    job = required("TFSTACK_CLUSTER_JOB_NAME")
    service = required("TFSTACK_CLUSTER_SERVICE")
    for name, value in (("TFSTACK_CLUSTER_JOB_NAME", job), ("TFSTACK_CLUSTER_SERVICE", service)):
        if not _DNS_LABEL.match(value) or len(value) > 63:
            raise ClusterError(
                f"Expected {name} to be a DNS label (lower-case letters, digits, '-'). Received: {name}={value!r}"
            )
    domain = env.get("TFSTACK_CLUSTER_DOMAIN", "").strip().strip(".")
    suffix = f".{service}.{domain}" if domain else f".{service}"
    if group is not None:  # the group's own Job: a JobSet child Job "<jobset>-<replicatedJob>-<group>"
        job = f"{job}-{group}"
    peers = tuple(f"{job}-{i}{suffix}:{port}" for i in range(workers))
    _check_addresses(peers, "TFSTACK_CLUSTER_*")
    return Cluster(peers=peers, rank=index, source="indexed_job")


def _check_addresses(peers: Sequence[str], variable: str) -> None:
    for address in peers:
        match = _ADDRESS.match(address)
        if not match:
            raise ClusterError(f"Expected 'host:port' addresses in {variable}. Received: {address!r}")
        if not 0 < int(match["port"]) < 65536:
            raise ClusterError(f"Expected ports in [1, 65535] in {variable}. Received: {address!r}")
    duplicates = sorted({a for a in peers if list(peers).count(a) > 1})
    if duplicates:
        raise ClusterError(f"Expected distinct worker addresses in {variable}. Received duplicates: {duplicates}")
