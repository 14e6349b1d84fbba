"""Regenerates the committed ``*_pb2`` modules from the ``.proto`` files in this folder.

Run from anywhere: ``python -m serving.wire.proto.regenerate`` (needs grpcio-tools, a dev
dependency). It runs protoc with the repository root as the import root, so generated modules import
each other as ``serving.wire.proto.*``, never as top-level ``tensorflow``/``tensorflow_serving``
packages, then rewrites each module to register into the private pool of ``serving.wire.proto``
and drops the generator-version checks (the generated code only uses long-stable protobuf and grpcio
APIs, and the core install accepts older runtimes than the generator's).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SERVICES = {"prediction_service", "model_service"}

_RUNTIME_CHECK = re.compile(
    r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n", re.MULTILINE
)
_GRPC_CHECK = re.compile(
    r"^GRPC_GENERATED_VERSION = .*?^    \)\n", re.MULTILINE | re.DOTALL
)


def _rewrite_pb2(text: str) -> str:
    text = _RUNTIME_CHECK.sub("", text)
    text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from serving.wire.proto import POOL as _POOL\n",
    )
    text = text.replace("_descriptor_pool.Default().AddSerializedFile(", "_POOL.AddSerializedFile(")
    if "_descriptor_pool" in text or "ValidateProtobufRuntimeVersion" in text:
        raise RuntimeError("Expected protoc output in the known shape. Received: a new layout.")
    return text


def _rewrite_grpc(text: str) -> str:
    text = _GRPC_CHECK.sub("", text)
    if "GRPC_GENERATED_VERSION" in text:
        raise RuntimeError("Expected grpc plugin output in the known shape. Received: a new layout.")
    return text.replace("import warnings\n", "")


def main() -> int:
    from grpc_tools import protoc  # dev dependency, imported only here

    include = Path(protoc.__file__).resolve().parent / "_proto"
    protos = sorted(p.relative_to(ROOT).as_posix() for p in HERE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", *protos]
        if protoc.main(args) != 0:
            print(f"protoc failed: {' '.join(args)}", file=sys.stderr)
            return 1
        generated = Path(out) / HERE.relative_to(ROOT)
        for old in HERE.glob("*_pb2*.py*"):
            old.unlink()
        for path in sorted(generated.iterdir()):
            stem = path.name.split("_pb2")[0]
            if path.name.endswith("_pb2.py"):
                (HERE / path.name).write_text(_rewrite_pb2(path.read_text()))
            elif path.name.endswith("_pb2.pyi"):
                (HERE / path.name).write_text("# ruff: noqa\n" + path.read_text())
            elif path.name.endswith("_pb2_grpc.py") and stem in SERVICES:
                (HERE / path.name).write_text(_rewrite_grpc(path.read_text()))
    print(f"regenerated {len(protos)} protos into {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
