"""serving.wire's public surface: a pinned ``__all__``, no TensorFlow, and imports that flow one way."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import serving.wire

ROOT = Path(__file__).resolve().parents[3]


def test_all_is_pinned_and_sorted() -> None:
    assert serving.wire.__all__ == [
        "DTYPES", "NUMPY_DTYPES", "WARMUP_FILE", "DType", "decode_predict_response", "decode_tensor",
        "dtype_for_enum", "dtype_for_numpy", "encode_model_spec", "encode_predict_request",
        "encode_predict_response", "encode_tensor", "encode_typed_tensor", "predict_log", "to_ndarray",
        "to_tensor_proto",
    ]
    assert serving.wire.__all__ == sorted(serving.wire.__all__, key=lambda n: (not n.isupper(), n))


def test_importing_the_wire_package_never_loads_tensorflow() -> None:
    code = (
        "import sys, serving.wire, serving.wire.warmup\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras'))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _imported_modules(package: Path) -> set[str]:
    found = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_imports_flow_one_way() -> None:
    """wire imports no other project package; the trainer imports serving.wire and nothing else of serving;
    the model server imports no private module of the client (STYLE.md: the export directory and the
    protocol are the only contracts)."""
    wire = _imported_modules(ROOT / "serving" / "wire")
    assert not {m for m in wire if m.startswith(("serving.client", "serving.model_server", "trainer"))}
    trainer = _imported_modules(ROOT / "trainer")
    assert {m for m in trainer if m.startswith("serving")} <= {"serving.wire", "serving.wire.warmup"}
    server = _imported_modules(ROOT / "serving" / "model_server")
    assert not {m for m in server if m.startswith("serving.client")}
    client = _imported_modules(ROOT / "serving" / "client")
    assert not {m for m in client if m.startswith(("serving.model_server", "trainer"))}
