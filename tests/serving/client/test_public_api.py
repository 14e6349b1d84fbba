"""The public surface: a pinned ``__all__``, and an import that never loads TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import serving.client


def test_all_is_pinned_and_sorted() -> None:
    assert serving.client.__all__ == [
        "AsyncClient", "AsyncMockTransport", "AsyncTransport", "Cancelled", "Client", "DeadlineExceeded",
        "InvalidInput", "MockTransport", "ModelMetadata", "ModelNotFound", "ModelStatus", "PermissionDenied",
        "Reply", "Request", "ResourceExhausted", "RetryPolicy", "ServerError", "ServingError", "Signature",
        "TLSConfig", "TensorSpec", "Transport", "Unavailable", "VersionStatus", "serve_metrics", "to_ndarray",
        "to_tensor_proto",
    ]
    assert serving.client.__all__ == sorted(serving.client.__all__)
    for name in serving.client.__all__:
        assert getattr(serving.client, name).__module__.startswith(("serving.client", "serving.wire"))


def test_importing_and_using_the_client_never_loads_tensorflow_or_ml_dtypes() -> None:
    code = (
        "import sys\n"
        "import serving.client\n"
        "from serving.client import Client\n"
        "import serving.client.__main__\n"
        "c = Client('127.0.0.1:1', 'digits'); c.close()\n"
        "r = Client('http://127.0.0.1:1', 'digits'); r.close()\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras', 'ml_dtypes'))\n"
        "print(bad)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[3]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_import_defers_numpy_and_protobuf_to_the_first_client() -> None:
    result = _fresh(
        "import sys\n"
        "from serving.client import Client, MockTransport\n"
        "print(sorted(m for m in ('numpy', 'google.protobuf', 'grpc', 'ml_dtypes') if m in sys.modules))\n"
        "import numpy as np\n"
        "from serving.client import ModelMetadata, Signature, TensorSpec\n"
        "sig = Signature('serving_default', {'x': TensorSpec('x', 'DT_FLOAT', (None,))}, {})\n"
        "def answer(request):\n"
        "    if request.method == 'metadata':\n"
        "        return ModelMetadata('m', 1, {'serving_default': sig})\n"
        "    return {'y': request.inputs['x']}\n"
        "with Client('unused:1', 'm', transport=MockTransport(answer)) as c:\n"
        "    c.predict({'x': [1.0]})\n"
        "print('ml_dtypes' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "False"]


def test_ml_dtypes_is_loaded_on_the_first_bfloat16_and_named_when_missing() -> None:
    result = _fresh(
        "import sys\n"
        "from serving.wire import codec\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "row = codec.dtype_for_enum('DT_BFLOAT16')\n"
        "print('ml_dtypes' in sys.modules, row.numpy, codec.DTYPES[14].name)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True bfloat16 DT_BFLOAT16"
    missing = _fresh(
        "import sys\n"
        "sys.modules['ml_dtypes'] = None  # as if not installed\n"
        "from serving.wire import codec\n"
        "assert codec.dtype_for_enum('DT_FLOAT').name == 'DT_FLOAT'\n"
        "codec.dtype_for_enum(14)\n"
    )
    assert missing.returncode == 1 and "tfstack[bfloat16]" in missing.stderr
