"""The one table of tensor dtypes TF Serving's JSON (REST) API carries, for every REST encoder and decoder.

From ``tensorflow_serving/util/json_tensor.cc`` (``AddValueToTensor`` / ``AddSingleValueAndAdvance`` read,
``WriteDecodedValue`` writes): float, double, int8/16/32/64, uint8/32/64, bool and string. float16,
bfloat16, uint16 and complex numbers are refused there ("Conversion of JSON Value: ... to type: half").
Used by the client's REST transport (``serving.client``) and the local model server's REST API
(``serving.model_server.tensors``), so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["JSON_DTYPES", "JSON_NUMERIC_DTYPES", "json_carries"]

#: Numeric and bool dtypes the JSON API carries.
JSON_NUMERIC_DTYPES: frozenset[np.dtype[Any]] = frozenset(
    np.dtype(name) for name in ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32",
                                "uint64", "bool")
)

#: Every dtype the JSON API carries: the numeric ones and strings (numpy ``object`` arrays of bytes).
JSON_DTYPES: frozenset[np.dtype[Any]] = JSON_NUMERIC_DTYPES | {np.dtype(object)}


def json_carries(dtype: np.dtype[Any]) -> bool:
    """Whether TF Serving's JSON API carries tensors of ``dtype`` (``S``/``U`` arrays count as strings)."""
    return dtype in JSON_DTYPES or dtype.kind in "SU"
