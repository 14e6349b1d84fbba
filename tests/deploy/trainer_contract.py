"""The trainer's exit-code contract (docs/distributed.md), as the chart's tests use it: taken from the
trainer itself (trainer.errors), so the chart's failure policies are checked against the codes the
trainer really exits with. `python -m trainer search` is the container's entrypoint (no shell in
between), so these are the container's exit codes. k8s/chart/templates/_helpers.tpl
("tfstack.trainer.exitCodes") names them once for the templates. And the cluster contract
(trainer/cluster.py): `resolve_search` resolves every rendered pod the way the trainer will."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.deploy.pods import Pod
from trainer import config as trainer_config
from trainer.cluster import Cluster, resolve
from trainer.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_NOT_PUBLISHED, EXIT_OK, EXIT_PEER_LOST

EXIT_CODES = {
    "done": EXIT_OK,
    "crash": EXIT_CRASH,  # anything unexpected: retryable
    "badInput": EXIT_BAD_INPUT,  # usage, configuration or data error: do not retry
    "notPublished": EXIT_NOT_PUBLISHED,  # the search finished but the publish gate refused the model
    "peerLost": EXIT_PEER_LOST,  # a peer was lost or the group could not form: restart the whole group
}


#: The trainer's save deadline after SIGTERM (trainer/config.py ``termination_grace_seconds``), set by the
#: chart from trainer.terminationGracePeriodSeconds less a margin.
SAVE_DEADLINE_VARIABLE = "TFSTACK_TERMINATION_GRACE_SECONDS"


def load_config(env: Mapping[str, str]) -> trainer_config.SearchConfig:
    """trainer.config.load over a rendered pod's environment (it refuses unknown TFSTACK_* names)."""
    return trainer_config.load({}, dict(env))


@dataclass(frozen=True)
class Search:
    """Every trainer pod of a rendering, resolved by the trainer itself (trainer.cluster.resolve)."""

    oracles: tuple[tuple[Pod, Cluster], ...]
    groups: dict[int, tuple[tuple[Pod, Cluster], ...]]
    """group -> its workers' (pod, cluster), in rank order."""


def resolve_search(pods: Sequence[Pod]) -> Search:
    """Hand EVERY pod's run-time environment to trainer.cluster.resolve and check what the chart must give
    the trainer (trainer/cluster.py): exactly one oracle when there are groups, none otherwise; each group
    the pods of one Job, ranks 0..W-1, whose peers are exactly the DNS names Kubernetes gives that Job's pods
    (hostname.subdomain.namespace.svc.cluster.local) and the port their containers listen on; every
    TFSTACK_ORACLE the oracle pod's DNS name and its container's oracle port; one KerasTuner tuner id per
    group; and an environment trainer.config accepts (it refuses unknown TFSTACK_* names)."""
    resolved = []
    for pod in pods:
        env = pod.env()
        load_config(env)
        resolved.append((pod, resolve(env)))
    oracles = tuple((pod, cluster) for pod, cluster in resolved if cluster.is_oracle)
    groups: dict[int, list[tuple[Pod, Cluster]]] = {}
    for pod, cluster in resolved:
        if not cluster.is_oracle:
            groups.setdefault(cluster.group, []).append((pod, cluster))
    search = Search(oracles, {g: tuple(sorted(members, key=lambda m: m[1].rank)) for g, members in groups.items()})
    count = {cluster.groups for _, cluster in resolved}
    assert len(count) == 1, f"Expected every pod to see the same TFSTACK_GROUPS. Received: {count}"
    (expected_groups,) = count
    assert sorted(search.groups) == list(range(expected_groups))
    assert len(oracles) == (1 if expected_groups > 1 else 0), [pod.hostname for pod, _ in oracles]
    oracle_address = None
    if oracles:
        ((oracle_pod, oracle_cluster),) = oracles
        oracle_address = f"{oracle_pod.dns_name()}:{oracle_pod.container_ports()['oracle']}"
        assert oracle_cluster.oracle == oracle_address  # it listens on the port it is reached on
        assert oracle_cluster.publishes and oracle_cluster.kerastuner_env() == {}
    tuner_ids = set()
    for group, members in search.groups.items():
        jobs = {pod.job for pod, _ in members}
        assert len(jobs) == 1, f"Expected group {group} to be one Job's pods. Received: {sorted(jobs)}"
        assert [cluster.rank for _, cluster in members] == list(range(len(members)))
        assert [pod.index for pod, _ in members] == [cluster.rank for _, cluster in members]
        peers = tuple(f"{pod.dns_name()}:{pod.container_ports()['cluster']}" for pod, _ in members)
        ids = set()
        for _pod, cluster in members:
            assert cluster.peers == peers and cluster.num_workers == len(members)
            assert cluster.oracle == oracle_address
            assert cluster.publishes == (expected_groups == 1 and cluster.rank == 0)
            kerastuner = cluster.kerastuner_env()
            if oracle_address is not None:
                assert f"{kerastuner['KERASTUNER_ORACLE_IP']}:{kerastuner['KERASTUNER_ORACLE_PORT']}" == oracle_address
            ids.add(kerastuner.get("KERASTUNER_TUNER_ID", cluster.tuner_id))
        assert len(ids) == 1, f"Expected one tuner id in group {group}. Received: {ids}"
        tuner_ids |= ids
    assert len(tuner_ids) == len(search.groups), f"Expected one tuner id per group. Received: {tuner_ids}"
    assert len({pod.job for members in search.groups.values() for pod, _ in members}) == len(search.groups)
    return search
