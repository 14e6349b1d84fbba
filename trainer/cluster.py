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
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.errors import ClusterError

__all__ = [
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

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

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
        if not self.peers:
            return "single process (no TF_CONFIG, no Indexed-Job variables)"
        role = "chief" if self.is_chief else "worker"
        return f"{role}, rank {self.rank} of {self.num_workers} (from {self.source}): {', '.join(self.peers)}"


def resolve(env: Mapping[str, str]) -> Cluster:
    """Build the cluster from `env` (TF_CONFIG, else Indexed-Job variables, else single process).

    Raises:
        ClusterError: the settings are present but invalid; the message names the variable.
    """
    if env.get("TF_CONFIG", "").strip():
        return _from_tf_config(env["TF_CONFIG"])
    if "JOB_COMPLETION_INDEX" in env or any(name in env for name in INDEXED_JOB_VARIABLES):
        return _from_indexed_job(env)
    return Cluster(peers=(), rank=0, source="single")


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


def _from_indexed_job(env: Mapping[str, str]) -> Cluster:
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
        raw = required(name)
        try:
            value = int(raw)
        except ValueError:
            raise ClusterError(f"Expected {name} to be an integer. Received: {name}={raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ClusterError(f"Expected {name} in {bound}. Received: {name}={value}")
        return value

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
