"""Bounded cluster formation: every worker reaches every other before the strategy is created.

TensorFlow's ``MultiWorkerMirroredStrategy`` waits indefinitely for a peer that never starts (a pod
Pending for lack of a GPU), and it waits inside ``context.ensure_initialized()``
(tensorflow/python/distribute/collective_all_reduce_strategy.py, ``_initialize_multi_worker``) while
holding the GIL, so neither a Python thread nor a signal handler can interrupt it. Its own bound,
``CollectiveAllReduceExtended._check_health_initial_timeout``, applies only to the barrier that
follows, not to that wait (verified on TF 2.21: a worker whose peer never starts still hangs).

So the trainer forms the group itself first, in pure Python, on the same ports TF_CONFIG names:
each worker listens on its own port and connects to every other worker's, saying its rank. When
it has reached every peer and every peer has reached it, it closes its listener and TensorFlow's
gRPC server binds the port. If that does not happen within the timeout, `form_group` raises
`ClusterFormationError` naming the peers that never answered (exit code 4: restart the group).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from trainer.cluster import Cluster
from trainer.errors import ClusterFormationError

__all__ = ["form_group"]

log = logging.getLogger(__name__)

_HELLO = b"tfstack-rendezvous %d\n"
_CONNECT_TIMEOUT = 2.0
_MAX_BACKOFF = 2.0


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Listener:
    """Accepts peers' hellos on this worker's port and records their ranks."""

    def __init__(self, port: int, rank: int) -> None:
        self.rank = rank
        self.heard: set[int] = set()
        self.changed = threading.Condition()
        if socket.has_dualstack_ipv6():
            self.sock = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            self.sock = socket.create_server(("", port))
        self.sock.settimeout(0.5)
        self.closed = False
        self.thread = threading.Thread(target=self._serve, name="tfstack-rendezvous", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(_CONNECT_TIMEOUT)
                with contextlib.suppress(OSError, ValueError):
                    line = conn.makefile("rb").readline(64)
                    peer = int(line.split()[1])
                    conn.sendall(_HELLO % self.rank)
                    with self.changed:
                        self.heard.add(peer)
                        self.changed.notify_all()
                    # Let the peer close first, so TIME_WAIT lands on its ephemeral port, not on ours
                    # (TensorFlow's gRPC server binds this port next).
                    conn.recv(1)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.thread.join(timeout=5)


def _hello(address: str, rank: int) -> bool:
    """Connect to a peer's port and exchange ranks; False when it is not listening (yet)."""
    try:
        with socket.create_connection(_split(address), timeout=_CONNECT_TIMEOUT) as conn:
            conn.sendall(_HELLO % rank)
            reply = conn.makefile("rb").readline(64)
    except OSError:
        return False
    return reply.startswith(b"tfstack-rendezvous ")


def form_group(cluster: Cluster, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once every worker of `cluster` has reached every other one; a no-op for one worker.

    Raises:
        ClusterFormationError: within `timeout` seconds, some peers were not reachable or never
            connected to this worker; the message names them (``worker 1 (host:port)``).
    """
    if cluster.num_workers < 2:
        return
    others = {rank: address for rank, address in enumerate(cluster.peers) if rank != cluster.rank}
    _, port = _split(cluster.peers[cluster.rank])
    log.info("waiting up to %.0fs for %d peer(s) to connect: %s", timeout, len(others), ", ".join(others.values()))
    deadline = clock() + timeout
    listener = _Listener(port, cluster.rank)
    reached: set[int] = set()
    backoff = 0.1
    try:
        while True:
            for rank in sorted(set(others) - reached):
                if _hello(others[rank], cluster.rank):
                    reached.add(rank)
            with listener.changed:
                if reached == set(others) and listener.heard >= set(others):
                    break
                remaining = deadline - clock()
                if remaining <= 0:
                    break
                # Retry backoff for unreachable peers; a hello from a peer wakes us at once.
                listener.changed.wait(min(backoff, remaining))
            backoff = min(backoff * 2, _MAX_BACKOFF)
    finally:
        listener.close()
    missing = sorted(set(others) - (reached & listener.heard))
    if missing:
        names = tuple(f"worker {rank} ({others[rank]})" for rank in missing)
        raise ClusterFormationError(
            f"Expected all {cluster.num_workers} workers to connect within {timeout:.0f}s "
            f"(--cluster-formation-timeout). Received nothing from: {', '.join(names)}. "
            "Restart the whole group once they can be scheduled.",
            missing=names,
        )
    log.info("all %d workers connected", cluster.num_workers)
