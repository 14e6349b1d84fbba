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


def test_importing_and_using_the_client_never_loads_tensorflow() -> None:
    code = (
        "import sys\n"
        "import serving.client\n"
        "from serving.client import Client\n"
        "import serving.client.__main__\n"
        "c = Client('127.0.0.1:1', 'digits'); c.close()\n"
        "r = Client('http://127.0.0.1:1', 'digits'); r.close()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras'))\n"
        "print(bad)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
