"""Predict inputs checked against the signature before anything is sent: names, dtype, rank, shape.

Pure functions over numpy and the cached metadata; :mod:`serving.client._core` builds requests with
them. A refusal is an :class:`InvalidInput` naming the input, and nothing was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from serving.client._errors import CallContext, InvalidInput
from serving.client._model import ModelMetadata, Signature, TensorSpec
from serving.client._transports.base import Request
from serving.wire.codec import NUMPY_DTYPES as _NUMPY_ROWS
from serving.wire.codec import dtype_for_numpy

__all__ = ["check_input", "predict_request", "signature_of"]


def predict_request(
    context: Callable[[], CallContext],
    model: str,
    inputs: Mapping[str, Any],
    signature: str,
    version: int | None,
    version_label: str | None,
    output_filter: Sequence[str] | None,
    metadata: ModelMetadata | None,
) -> Request:
    """A predict :class:`Request` of checked arrays (checked against ``metadata`` when given)."""
    filters = tuple(output_filter or ())
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput(
            f"Expected a non-empty mapping of input name to array. Received: {type(inputs).__name__}",
            context=context(),
        )
    sig = signature_of(metadata, signature, context) if metadata is not None else None
    arrays = {name: check_input(name, value, sig, context) for name, value in inputs.items()}
    if sig is not None:
        if len(arrays) != len(sig.inputs):
            missing = sorted(set(sig.inputs) - set(arrays))
            raise InvalidInput(
                f"Expected every input of signature {signature!r}: {sorted(sig.inputs)}. "
                f"Received: missing {missing}",
                context=context(),
            )
        unknown_outputs = sorted(set(filters) - set(sig.outputs))
        if unknown_outputs:
            raise InvalidInput(
                f"Expected output_filter names among {sorted(sig.outputs)}. Received: unknown {unknown_outputs}",
                context=context(),
            )
    return Request("predict", model, version, version_label, signature, arrays, filters,
                   outputs=sig.outputs if sig is not None else None)


def signature_of(metadata: ModelMetadata, signature: str, context: Callable[[], CallContext]) -> Signature:
    sig = metadata.signatures.get(signature)
    if sig is None:
        raise InvalidInput(
            f"Expected a signature of model {metadata.model!r} among {sorted(metadata.signatures)}. "
            f"Received: signature={signature!r}",
            context=context(),
        )
    return sig


def check_input(
    name: str, value: Any, sig: Signature | None, make_context: Callable[[], CallContext]
) -> np.ndarray[Any, Any]:
    """The input as an array the codec carries, checked against its spec: dtype, rank, shape."""
    spec = sig.inputs.get(name) if sig is not None else None
    if spec is not None and type(value) is np.ndarray and spec.shape is not None:
        # fast path: an array of exactly the declared dtype and a matching shape
        row = _NUMPY_ROWS.get(value.dtype)
        if (row is not None and row.name == spec.dtype and value.ndim == len(spec.shape)
                and all(w is None or w == g for w, g in zip(spec.shape, value.shape, strict=True))):
            return value
    context = make_context()
    if sig is not None and spec is None:
        raise InvalidInput(
            f"Expected input names among {sorted(sig.inputs)} for signature {sig.name!r}. "
            f"Received: unknown input {name!r}",
            context=context,
        )
    want = spec.numpy_dtype if spec is not None else None
    try:
        if isinstance(value, np.ndarray):
            array = value
        elif want is not None and want.kind != "O":
            array = np.asarray(value, dtype=want)
        else:
            array = np.asarray(value, dtype=object if _looks_like_strings(value) else None)
        if array.dtype.kind in "SU":
            array = array.astype(object)
        row = dtype_for_numpy(array.dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"Expected input {name!r} as an array. Received: {exc}", context=context) from exc
    if spec is not None:
        if spec.dtype != row.name:
            raise InvalidInput(
                f"Expected input {name!r} of dtype {spec.dtype} ({want}). "
                f"Received: dtype={array.dtype} ({row.name})",
                context=context,
            )
        _check_shape(name, spec, array, context)
    return array


def _check_shape(name: str, spec: TensorSpec, array: np.ndarray[Any, Any], context: Any) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"Expected input {name!r} of rank {len(spec.shape)} (shape {_show(spec.shape)}). "
            f"Received: shape={list(array.shape)}",
            context=context,
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want is not None and want != got:
            raise InvalidInput(
                f"Expected input {name!r} of shape {_show(spec.shape)} (dimension {axis} = {want}). "
                f"Received: shape={list(array.shape)}",
                context=context,
            )


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _looks_like_strings(value: Any) -> bool:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return isinstance(value, (bytes, str))
