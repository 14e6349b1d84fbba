"""Worker agreement: one all-gather proves every worker trains the same thing, or names what differs."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer.errors import DivergenceError

__all__ = ["assert_workers_agree", "broadcast_text", "payload_hash"]

log = logging.getLogger(__name__)


def payload_hash(payload: bytes | str) -> int:
    """A stable non-negative 63-bit hash of `payload` (the same in every process and run)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


def assert_workers_agree(
    strategy: tf.distribute.Strategy, payload: bytes | str | Mapping[str, Any], what: str
) -> None:
    """Raise `DivergenceError` unless every worker passes the same `payload`.

    A collective: every worker must call it at the same point. `payload` is one value, or named
    values (``{"data_fingerprint": ..., "steps_per_epoch": ..., "restored_epoch": ...}``) compared
    in one all-gather of their 63-bit `payload_hash` es; all workers see the same table and so all
    raise, or none does. The error names the values that differ and this worker's value of each.
    """
    fields = {what: payload} if isinstance(payload, (bytes, str)) else dict(sorted(payload.items()))
    texts = {name: v if isinstance(v, (bytes, str)) else json.dumps(v, sort_keys=True, default=str)
             for name, v in fields.items()}
    local = tf.constant([[payload_hash(t) for t in texts.values()]], dtype=tf.int64)

    def gather() -> tf.Tensor:
        return tf.distribute.get_replica_context().all_gather(local, axis=0)

    table = strategy.experimental_local_results(strategy.run(gather))[0].numpy()  # [replicas, fields]
    differ = [(i, name) for i, name in enumerate(texts) if len({int(h) for h in table[:, i]}) > 1]
    if differ:
        details = "; ".join(
            f"{name}: hashes by replica={[f'{int(h):016x}' for h in table[:, i]]}, this worker's "
            f"{_shorten(texts[name])!s} ({payload_hash(texts[name]):016x})"
            for i, name in differ
        )
        raise DivergenceError(
            f"Expected every worker to agree on {what}. Received differences in "
            f"{', '.join(name for _, name in differ)}: {details}"
        )
    log.debug("%d replicas agree on %s", table.shape[0], what)


def _shorten(text: bytes | str, limit: int = 200) -> str:
    shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return shown if len(shown) <= limit else shown[:limit] + "..."


def broadcast_text(strategy: tf.distribute.Strategy, text: str, *, limit: int = 256) -> str:
    """The chief's `text` on every worker (a collective: every worker calls it; others' `text` is ignored).

    One all-gather of ``[length, byte...]`` rows, padded to `limit` bytes; row 0 is the chief's first replica.
    """
    data = text.encode("utf-8")
    if len(data) > limit:
        raise ValueError(f"Expected at most {limit} bytes to broadcast. Received: {len(data)}")
    local = tf.constant([[len(data), *data.ljust(limit, b"\0")]], dtype=tf.int64)

    def gather() -> tf.Tensor:
        return tf.distribute.get_replica_context().all_gather(local, axis=0)

    row = strategy.experimental_local_results(strategy.run(gather))[0].numpy()[0]
    return bytes(int(b) for b in row[1 : 1 + int(row[0])]).decode("utf-8")
