"""One loaded model version: its SavedModel, its SignatureDefs and the predict/classify/regress calls.

A :class:`Servable` is immutable once built and safe to call from many threads; the loader swaps whole
servables in and out, and a request that already holds one finishes on it even if it was unloaded meanwhile.
SignatureDefs are read from ``saved_model.pb`` itself (what GetModelMetadata returns, exactly as TF Serving
does); the callables come from ``tf.saved_model.load(path).signatures``, or, for a session-style (TF1)
export that loader cannot load, from a ``tf.compat.v1`` session run on the SignatureDef's tensor names
(:mod:`serving.model_server.session_bundle`, as TF Serving's SavedModelBundle runs every model). Either
way a servable offers the same signatures and calls, so the request path does not know which loader ran.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import ops
from tensorflow.python.util import nest
from tensorflow_serving.apis import prediction_log_pb2

from serving.model_server import session_bundle, tensors
from serving.model_server.batching import Batcher
from serving.model_server.errors import FailedPrecondition, Internal, InvalidArgument, ModelServerError
from serving.model_server.metrics import ServerMetrics

__all__ = [
    "CLASSIFY_METHOD",
    "DEFAULT_SIGNATURE",
    "PREDICT_METHOD",
    "REGRESS_METHOD",
    "Servable",
    "SignatureInfo",
    "WarmupDataLoss",
    "read_warmup_records",
    "serialize_input",
]

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecordsPerWarmupFile... is 1000 too.

_DT_STRING = tf.string.as_datatype_enum
_TF_TO_STATUS = {
    tf.errors.InvalidArgumentError: InvalidArgument,
    tf.errors.FailedPreconditionError: FailedPrecondition,
    tf.errors.OutOfRangeError: InvalidArgument,
}


@dataclass(frozen=True)
class SignatureInfo:
    """What a request is checked against: input aliases with dtype and shape, output aliases."""

    name: str
    method_name: str
    inputs: Mapping[str, tuple[np.dtype[Any], tf.TensorShape]]
    outputs: tuple[str, ...]
    function: Any
    dims: Mapping[str, tuple[int | None, ...] | None] = field(init=False)
    """Per input, its dimensions (None: any size), or None for an unknown rank."""
    flat_order: tuple[str, ...] = field(init=False)
    """The function's positional input order, or () where only the keyword call applies."""
    direct: _DirectCall | None = field(init=False)
    """The direct eager call, where it applies."""

    def __post_init__(self) -> None:  # derived once: the predict path reads them on every request
        dims = {a: (None if s.rank is None else tuple(s.as_list())) for a, (_d, s) in self.inputs.items()}
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "flat_order", _flat_order(self.function, set(self.inputs)))
        object.__setattr__(self, "direct", _DirectCall.for_function(self.function) if self.flat_order else None)

    def call(self, arrays: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        """Call the signature function on numpy arrays: directly in the eager runtime where possible (see
        :class:`_DirectCall`), else with the flat call, which skips Python argument binding, else with keywords."""
        if isinstance(self.function, session_bundle.SessionSignature):
            return self.function(arrays)
        if not self.flat_order:
            return self.function(**{alias: _constant(array) for alias, array in arrays.items()})
        direct = self.direct
        if direct is not None and context.executing_eagerly():
            return direct([arrays[a] for a in self.flat_order])
        return self.function._call_flat([_constant(arrays[a]) for a in self.flat_order], self.function.captured_inputs)


def _constant(array: np.ndarray) -> Any:
    return tf.constant(array, dtype=tf.string if array.dtype.kind in "SUO" else None)


@dataclass(frozen=True)
class _DirectCall:
    """What ``ConcreteFunction._call_flat`` ends in when executing eagerly, without the Python around it.

    ``_call_flat`` checks for gradient tapes, enters three context managers (error-message interpolation,
    control dependencies, tape pausing) and packs the outputs, and ``tf.constant`` goes through two
    wrappers before it builds the ``EagerTensor``; on a tiny model that is about half of the call's cost
    (150 -> 77 us per call here; ``bench/server_bench.py`` measures the server). A server has no tapes and
    needs outputs by alias, so it calls the eager runtime's function call itself. Built only
    where TensorFlow's internals look as they do in 2.21 and the outputs are plain tensors; otherwise
    :meth:`for_function` returns None and the flat call is used.
    """

    context: Any
    name: bytes
    captured: tuple[Any, ...]
    positions: tuple[tuple[str, int], ...]

    @classmethod
    def for_function(cls, function: Any) -> _DirectCall | None:
        try:
            inference = function._inference_function
            flat_outputs = inference.function_type.flat_outputs
            positions = nest.pack_sequence_as(function.structured_outputs, list(range(len(flat_outputs))))
            direct = cls(inference._bound_context, inference.name, tuple(function.captured_inputs),
                         tuple(sorted(positions.items())))
            deferred = any(callable(c) for c in function._captured_inputs)
        except (AttributeError, TypeError, ValueError):
            return None
        if deferred or not isinstance(direct.name, bytes) or not hasattr(direct.context, "call_function"):
            return None
        if any(spec.dtype in (tf.resource, tf.variant) for spec in flat_outputs):
            return None
        return direct

    def __call__(self, arrays: list[np.ndarray]) -> dict[str, Any]:
        device = self.context.device_name  # what tf.constant does, without its Python wrappers
        args = [ops.EagerTensor(a, device, _DT_STRING if a.dtype.kind in "SUO" else None) for a in arrays]
        flat = self.context.call_function(self.name, [*args, *self.captured], len(self.positions))
        return {alias: flat[i] for alias, i in self.positions}


def _flat_order(function: Any, aliases: set[str]) -> tuple[str, ...]:
    """The positional order of a signature function's inputs, or () when the flat call is not available."""
    try:
        order = tuple(function.function_type.parameters)
        function._call_flat  # noqa: B018 - present on ConcreteFunction in TF 2.x
    except AttributeError:
        return ()
    return order if set(order) == aliases and len(order) == len(aliases) else ()


def _read_meta_graph(path: Path, tags: set[str]) -> meta_graph_pb2.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel()
    if (path / "saved_model.pb").exists():
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    elif (path / "saved_model.pbtxt").exists():
        text_format.Parse((path / "saved_model.pbtxt").read_text(), saved_model)
    else:
        raise FileNotFoundError(f"Expected saved_model.pb or saved_model.pbtxt in {path}. Received: neither")
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"Expected a MetaGraphDef with tags {sorted(tags)} in {path}. Received: tags {found}")


class WarmupDataLoss(ValueError):
    """A warm-up file that is not whole TFRecords (TF Serving: DATA_LOSS)."""


def read_warmup_records(path: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Read TF Serving's warm-up file (a TFRecord of ``PredictionLog``), at most 1000 records."""
    data = path.read_bytes()
    records = []
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise WarmupDataLoss(f"Expected a whole TFRecord header in {path}. Received: truncated at byte {offset}")
        (length,) = struct.unpack_from("<Q", data, offset)
        start = offset + 12
        if start + length + 4 > len(data):
            raise WarmupDataLoss(f"Expected a whole TFRecord in {path}. Received: truncated at byte {offset}")
        records.append(prediction_log_pb2.PredictionLog.FromString(data[start : start + length]))
        offset = start + length + 4
        if len(records) > MAX_WARMUP_RECORDS:
            raise ValueError(f"Expected at most {MAX_WARMUP_RECORDS} warm-up records in {path}. Received: more")
    return records


class Servable:
    """A loaded SavedModel version. Build with :meth:`load`."""

    def __init__(
        self, name: str, version: int, path: Path, meta_graph: meta_graph_pb2.MetaGraphDef, loaded: Any
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = dict(meta_graph.signature_def)
        self._loaded = loaded  # keeps the variables (or the session) alive
        self.batcher: Batcher | None = None  # set by the server when --enable_batching
        self.method_name_check = False  # set by the server: --enable_signature_method_name_check
        self.metrics: ServerMetrics | None = None  # set by the server: runtime latency
        self.signatures: dict[str, SignatureInfo] = {}
        if isinstance(loaded, session_bundle.SessionBundle):
            for sig_name, (method, inputs, outputs, run) in loaded.signatures().items():
                self.signatures[sig_name] = SignatureInfo(sig_name, method, inputs, outputs, run)
            return
        for sig_name, sig_def in self.signature_defs.items():
            if sig_name not in loaded.signatures:
                continue  # e.g. TF1 "__saved_model_init_op"
            fn = loaded.signatures[sig_name]
            specs = fn.structured_input_signature[1]
            inputs = {
                alias: (tensors.numpy_dtype(spec.dtype.as_datatype_enum), spec.shape) for alias, spec in specs.items()
            }
            self.signatures[sig_name] = SignatureInfo(
                sig_name, sig_def.method_name, inputs, tuple(sorted(fn.structured_outputs)), fn
            )

    @property
    def session_style(self) -> bool:
        """Whether this version runs in a ``tf.compat.v1`` session (a TF1 export the TF2 loader refused)."""
        return isinstance(self._loaded, session_bundle.SessionBundle)

    @classmethod
    def load(cls, name: str, version: int, path: str | Path, tags: Sequence[str] = ("serve",)) -> Servable:
        """Load ``path`` (a version directory). Raises whatever TensorFlow raises for a broken export.

        ``tf.saved_model.load`` first; a TF1 export (no object graph) that it cannot load, such as
        upstream's ``saved_model_half_plus_three`` ("Shape must be rank 1 but is rank 0" while it
        re-traces the ParseExample of the regress signature), is loaded into a session instead.
        """
        path = Path(path)
        meta_graph = _read_meta_graph(path, set(tags))
        try:
            loaded = tf.saved_model.load(str(path), tags=list(tags))
        except Exception as exc:  # TF1 exports fail in several ways (ValueError, KeyError, OpError...)
            if meta_graph.HasField("object_graph_def"):
                raise  # a TF2 export: the session loader would not do better
            log.info("model %s version %d: the TF2 loader failed (%s); loading it as a session bundle",
                     name, version, (str(exc).splitlines() or [type(exc).__name__])[0][:200])
            loaded = session_bundle.SessionBundle.load(path, tags, meta_graph)
        return cls(name, version, path, meta_graph, loaded)

    def _runtime(self, method: str, start: float) -> None:
        if self.metrics is not None:
            self.metrics.runtime(self.name, method, time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------ lookups

    def signature(self, name: str, method: str = PREDICT_METHOD) -> SignatureInfo:
        """The signature called ``name`` (``""`` means ``serving_default``), with TF Serving's error if absent:
        FAILED_PRECONDITION for predict (``predict_util.cc``), INVALID_ARGUMENT for classify and regress."""
        key = name or DEFAULT_SIGNATURE
        info = self.signatures.get(key)
        if info is None:
            if method == PREDICT_METHOD:
                raise FailedPrecondition(f'Serving signature key "{key}" not found.')
            raise InvalidArgument(f"No signature was found with the name: {key}")
        return info

    # ------------------------------------------------------------------------------------------ calls

    def _run(self, info: SignatureInfo, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check and run; with ``--enable_batching`` merged with concurrent calls (predict, classify, regress)."""
        feed = self._feed(info, inputs)
        if self.batcher is not None:
            return self.batcher.run((id(self), info.name), feed, lambda merged: self._call(info, merged))
        return self._call(info, feed)

    def _feed(self, info: SignatureInfo, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Check dtypes against the signature (InvalidArgument, as the session's feed check does).

        Shapes are not checked: TF Serving feeds tensors as given and the graph decides
        (``predict_util.cc``), so a ``[3]`` tensor for an ``x`` of ``[-1, 1]`` runs if the graph allows it.
        """
        feed = {}
        for alias, array in inputs.items():
            dtype, _shape = info.inputs[alias]
            is_string = dtype.kind == "O"
            if array.dtype != dtype and not (is_string and array.dtype.kind in "SUO"):
                raise InvalidArgument(
                    f"Expects arg[{alias}] to be {tensors.type_string(dtype)} but "
                    f"{tensors.type_string(array.dtype)} is provided (signature {info.name!r})"
                )
            feed[alias] = array
        return feed

    def _call(self, info: SignatureInfo, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = info.call(feed)
        except tf.errors.OpError as exc:
            error = _TF_TO_STATUS.get(type(exc), Internal)
            raise error(f"{exc.message} (model {self.name!r} version {self.version}, signature {info.name!r})") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{exc} (model {self.name!r} signature {info.name!r})") from exc
        return {k: _to_numpy(v) for k, v in result.items()}

    def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> tuple[SignatureInfo, dict[str, np.ndarray]]:
        """Run a predict signature; checks what ``predict_util.cc`` checks first (aliases, dtypes; no shapes)."""
        info = self.signature(signature_name)
        if self.method_name_check and info.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise Internal(
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
                f"{REGRESS_METHOD}}}. Was: {info.method_name}"
            )
        if inputs.keys() != info.inputs.keys():
            sent, expected = sorted(inputs), sorted(info.inputs)
            if len(sent) != len(expected):  # VerifyRequestInputsSize
                raise InvalidArgument(
                    f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sent)}}}) "
                    f"!= len({{{','.join(expected)}}}). Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
                    f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}."
                )
            unknown = sorted(set(sent) - set(expected))
            raise InvalidArgument(
                f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the set "
                f"{{{','.join(expected)}}}."
            )
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in info.outputs:
                raise InvalidArgument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(info.outputs)}}}."
                )
            if alias in seen:
                raise InvalidArgument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        start = time.perf_counter()
        outputs = self._run(info, inputs)
        self._runtime("predict", start)
        if output_filter:
            outputs = {k: outputs[k] for k in output_filter}
        return info, outputs

    def _example_signature(self, signature_name: str, method: str) -> SignatureInfo:
        """PreProcessClassification / PreProcessRegression: the method name only with the check enabled."""
        info = self.signature(signature_name, method)
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if self.method_name_check and info.method_name != method:
            raise InvalidArgument(f"Expected {kind} signature method_name to be {method}. Was: {info.method_name}")
        if len(info.inputs) != 1:
            raise InvalidArgument("Expected one input Tensor.")
        if method == CLASSIFY_METHOD and len(info.outputs) not in (1, 2):
            raise InvalidArgument(f"Expected one or two output Tensors, found {len(info.outputs)}")
        if method == REGRESS_METHOD and len(info.outputs) != 1:
            raise InvalidArgument("Expected one output Tensor.")
        if "inputs" not in info.inputs:
            raise InvalidArgument(f"No {kind} inputs found in SignatureDef: {self.signature_defs[info.name]}")
        return info

    def classify(self, signature_name: str, serialized: Sequence[bytes]) -> tuple[SignatureInfo, Any, Any]:
        """Run a classify signature on serialized Examples; returns (signature, classes or None, scores or None)."""
        info = self._example_signature(signature_name, CLASSIFY_METHOD)
        if "classes" not in info.outputs and "scores" not in info.outputs:
            raise InvalidArgument(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {self.signature_defs[info.name]}"
            )
        start = time.perf_counter()
        outputs = self._run(info, {"inputs": np.array(list(serialized), dtype=object)})
        self._runtime("classify", start)
        classes, scores = outputs.get("classes"), outputs.get("scores")
        n = len(serialized)
        for label, array in (("classes", classes), ("scores", scores)):
            if array is not None and (array.ndim != 2 or array.shape[0] != n):
                raise InvalidArgument(f"Expected tensor '{label}' of shape [{n}, num_classes]. Received: {array.shape}")
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise InvalidArgument(
                f"Expected classes and scores of one shape. Received: {classes.shape}, {scores.shape}"
            )
        return info, classes, scores

    def regress(self, signature_name: str, serialized: Sequence[bytes]) -> tuple[SignatureInfo, np.ndarray]:
        """Run a regress signature on serialized Examples; returns (signature, one float per example)."""
        info = self._example_signature(signature_name, REGRESS_METHOD)
        if "outputs" not in info.outputs:
            raise InvalidArgument(f"No regression outputs found in SignatureDef: {self.signature_defs[info.name]}")
        start = time.perf_counter()
        values = self._run(info, {"inputs": np.array(list(serialized), dtype=object)})["outputs"]
        self._runtime("regress", start)
        n = len(serialized)
        if values.size != n or values.ndim not in (1, 2):
            raise InvalidArgument(f"Expected output 'outputs' of shape [{n}] or [{n}, 1]. Received: {values.shape}")
        return info, values.reshape(n)

    # ------------------------------------------------------------------------------------------ warm-up

    def warm_up(self, iterations: int = 1) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` like TF Serving; returns how many ran."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        records = read_warmup_records(path)
        count = 0
        for _ in range(max(iterations, 1)):
            for record in records:
                kind = record.WhichOneof("log_type")
                try:
                    if kind == "predict_log":
                        request = record.predict_log.request
                        inputs = {k: tensors.make_ndarray(v) for k, v in request.inputs.items()}
                        self.predict(request.model_spec.signature_name, inputs, list(request.output_filter))
                    elif kind in ("classify_log", "regress_log"):
                        request = getattr(record, kind).request
                        serialized = serialize_input(request.input)
                        call = self.classify if kind == "classify_log" else self.regress
                        call(request.model_spec.signature_name, serialized)
                    else:
                        raise ValueError(f"Expected predict, classify or regress warm-up records. Received: {kind}")
                except ModelServerError as exc:
                    raise ValueError(f"Warm-up request {count} in {path} failed: {exc.message}") from exc
                count += 1
        log.info("model %s version %d: replayed %d warm-up requests", self.name, self.version, count)
        return count


def serialize_input(request_input: Any) -> list[bytes]:
    """Serialized tf.Examples of a ClassificationRequest/RegressionRequest ``input`` field."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return tensors.examples_from_input(request_input.example_list.examples, None)
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        return tensors.examples_from_input(with_context.examples, with_context.context)
    raise InvalidArgument(f"Expected input.example_list or input.example_list_with_context. Received: {kind}")



def _to_numpy(tensor: Any) -> np.ndarray:
    """The tensor's values without ``.numpy()``'s copy (``_numpy()`` shares the CPU tensor's buffer, read-only
    here: replies only read outputs); one copy fewer per output on the memory budget."""
    try:
        array = tensor._numpy()
    except AttributeError:  # not an EagerTensor
        return np.asarray(tensor)
    if isinstance(array, np.ndarray):
        array.flags.writeable = False
    return array
