"""The server-wide memory budget for decoded request data, and what each request is charged against it.

One :class:`MemoryBudget` per server (``--request_memory_budget_bytes``; ours, ``tensorflow_model_server``
has no such flag). A request reserves its cost *before* anything is decoded, from what the request
declares (the tensors' shapes and dtypes, the wire size, a REST body's length), and gives it back once
the reply is written. A request that does not fit is refused at once with RESOURCE_EXHAUSTED (HTTP 429,
TF Serving's mapping in ``model_servers/http_server.cc`` ``ToHTTPStatusCode``); nothing waits, so the
requests that did fit, and small ones, go on being served.

Costs are upper bounds of what the Python server really allocates (``docs/model_server.md``, "Memory"):

- gRPC predict: the wire bytes (grpc's copy, then protobuf's parsed copy) plus, per numeric tensor,
  :data:`NUMERIC_COPIES` times its decoded size, measured on ``half_plus_two`` (outputs as large as the
  inputs, as for most models): the numpy array, TensorFlow's input tensor, the model's intermediate and
  output tensors (the reply reads the output in place, no ``.numpy()`` copy), the encoded reply and its
  transient join, grpc's send copy; one more with ``--enable_batching`` (the batcher's concatenation).
  String elements cost :data:`STRING_ELEMENT_BYTES` each (the Python object, the object array's reference,
  TensorFlow's ``tstring``) plus their payload twice (Python's and TensorFlow's).
- REST: the body; before parsing, what ``json.loads`` and the conversion to arrays build from it, from
  counts of its tokens (:func:`parse_cost`: per ``[``/``{`` a list or dict, per ``,`` an element; measured
  on ``[[0],[0],...]``, 28 bytes per body byte in Python's parser plus 12 for the conversion, and float
  lists, 4.7); after conversion the parsed JSON is dropped and exchanged for the arrays' copies on the way
  to the model (as gRPC's); before the reply is written, :data:`JSON_REPLY_ELEMENT_BYTES` per output
  element (Python lists and floats, then the text).
- classify / regress: the wire bytes and the serialized examples, twice (list and TensorFlow's copy).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from serving.model_server.errors import ResourceExhausted

__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "JSON_REPLY_ELEMENT_BYTES",
    "NUMERIC_COPIES",
    "STRING_ELEMENT_BYTES",
    "MemoryBudget",
    "Reservation",
    "container_memory_bytes",
    "default_budget_bytes",
    "parse_cost",
    "predict_array_cost",
    "predict_cost",
    "reply_cost",
]

#: Share of the container's memory limit that decoded requests may take together, by default. The rest
#: is for the models' weights, TensorFlow's runtime and pools, and the replies.
DEFAULT_BUDGET_FRACTION = 0.10
_MIN_DEFAULT = 64 * 1024 * 1024

#: Parsing a REST body: bytes per ``[`` or ``{`` (a list or dict and its slot), per ``,`` (an element: its
#: reference, a float or int object, the conversion's share), and per body byte (string payloads, numpy).
_PER_CONTAINER, _PER_ELEMENT, _PER_BYTE = 96, 64, 2

#: Writing a REST reply: bytes per output element (a Python float in a list, the text, its UTF-8 copy).
JSON_REPLY_ELEMENT_BYTES = 128

#: Bytes per string element besides its payload: a Python ``bytes`` object (33), the object array's
#: reference (8), TensorFlow's ``tstring`` (24), rounded up for the allocator.
STRING_ELEMENT_BYTES = 80

#: Copies of a numeric tensor's values on the way to the model and back, measured (see the docstring).
NUMERIC_COPIES = 7

_CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")


def container_memory_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The memory this process may use: cgroup v2 ``memory.max``, else v1 ``memory.limit_in_bytes``, else
    the machine's physical memory (whichever is smaller; "max" and v1's huge "unlimited" value mean none)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def default_budget_bytes(memory_bytes: int | None = None) -> int:
    """:data:`DEFAULT_BUDGET_FRACTION` of :func:`container_memory_bytes`, at least 64 MiB."""
    memory = container_memory_bytes() if memory_bytes is None else memory_bytes
    return max(int(memory * DEFAULT_BUDGET_FRACTION), _MIN_DEFAULT)


class MemoryBudget:
    """A counter of reserved bytes with a capacity; :meth:`reserve` refuses at once, never waits."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"Expected a positive memory budget. Received: {capacity}")
        self.capacity = capacity
        self._used = 0
        self._peak = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most bytes reserved at once since start (forced charges included)."""
        return self._peak

    def acquire(self, nbytes: int, what: str = "the request") -> None:
        """Reserve ``nbytes`` or raise ResourceExhausted (the message says whether it could ever fit)."""
        with self._lock:
            if self._used + nbytes <= self.capacity:
                self._used += nbytes
                self._peak = max(self._peak, self._used)
                return
            used = self._used
        if nbytes > self.capacity:
            raise ResourceExhausted(
                f"Expected {what} to need at most the server's request memory budget of {self.capacity} bytes "
                f"(--request_memory_budget_bytes). Received: a request that needs {nbytes} bytes decoded"
            )
        raise ResourceExhausted(
            f"Server request memory budget exhausted: {what} needs {nbytes} bytes, {self.capacity - used} of "
            f"{self.capacity} are free (--request_memory_budget_bytes); retry later or elsewhere"
        )

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` that are already allocated (e.g. a reply), even past the capacity."""
        with self._lock:
            self._used += nbytes
            self._peak = max(self._peak, self._used)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes

    @contextlib.contextmanager
    def hold(self, nbytes: int, what: str = "the request") -> Iterator[Reservation]:
        """Reserve ``nbytes`` for the block; what :meth:`Reservation.add` adds is released with it."""
        self.acquire(nbytes, what)
        reservation = Reservation(self, nbytes)
        try:
            yield reservation
        finally:
            self.release(reservation.total)


class Reservation:
    """Bytes held for one request; grows with :meth:`add` (may refuse) or :meth:`charge` (never refuses)."""

    def __init__(self, budget: MemoryBudget, total: int = 0) -> None:
        self.budget = budget
        self.total = total

    def add(self, nbytes: int, what: str = "the request") -> None:
        self.budget.acquire(nbytes, what)
        self.total += nbytes

    def charge(self, nbytes: int) -> None:
        self.budget.charge(nbytes)
        self.total += nbytes


def _dtype_size(enum: int) -> int:
    from serving.model_server.tensors import numpy_dtype

    dtype = numpy_dtype(enum)
    return 0 if dtype.kind == "O" else dtype.itemsize


def predict_cost(protos: Mapping[str, Any], batching: bool) -> int:
    """Bytes a predict request's tensors take decoded, from their declared shapes and dtypes (not their values:
    TensorFlow fills a shape from one value). Numbers count every copy; strings their per-element overhead
    plus the payload, twice (Python's bytes and TensorFlow's)."""
    total = 0
    copies = NUMERIC_COPIES + (1 if batching else 0)
    for proto in protos.values():
        count = math.prod(max(d.size, 0) for d in proto.tensor_shape.dim)
        itemsize = _dtype_size(proto.dtype)
        if itemsize:
            total += count * itemsize * copies
        else:  # Python's bytes, then TensorFlow's copy, which repeats the last value to fill the shape
            values = proto.string_val
            payload = sum(len(s) for s in values)
            filled = payload + max(count - len(values), 0) * (len(values[-1]) if values else 0)
            total += count * STRING_ELEMENT_BYTES * (2 if batching else 1) + payload + filled
    return total


def parse_cost(body: bytes) -> int:
    """Bytes that parsing a REST body and converting it to arrays may take, from counts of its tokens
    (``bytes.count`` runs at memory speed: a 64 MiB body is counted in milliseconds)."""
    containers = body.count(b"[") + body.count(b"{")
    return containers * _PER_CONTAINER + (body.count(b",") + 1) * _PER_ELEMENT + len(body) * _PER_BYTE


def predict_array_cost(arrays: Mapping[str, Any]) -> int:
    """Decoded arrays on their way to the model (:data:`NUMERIC_COPIES` for numbers; strings their objects)."""
    total = 0
    for array in arrays.values():
        if array.dtype.kind == "O":
            total += array.size * STRING_ELEMENT_BYTES + 2 * sum(len(v) for v in array.ravel().tolist()
                                                                  if isinstance(v, bytes))
        else:
            total += array.nbytes * NUMERIC_COPIES
    return total


def reply_cost(outputs: Mapping[str, Any]) -> int:
    """A REST reply's JSON for ``outputs``: :data:`JSON_REPLY_ELEMENT_BYTES` per element."""
    return sum(int(a.size) for a in outputs.values()) * JSON_REPLY_ELEMENT_BYTES
