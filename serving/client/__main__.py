"""The client's command line: ``python -m serving.client {predict,status,metadata}``.

Exit status: 0 ok, 1 failure (server error, unreadable file, no AVAILABLE version for ``status``),
2 usage. One line on stderr per error; tracebacks only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.client._client import Client, TLSConfig
from serving.client._errors import ServingError
from serving.client._model import ModelMetadata, TensorSpec

__all__ = ["build_parser", "main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="localhost:8500",
                        help="host:port for gRPC, http(s)://host:port for REST (default: %(default)s)")
    parser.add_argument("--model", default="digits", help="model name (default: %(default)s)")
    version = parser.add_mutually_exclusive_group()
    version.add_argument("--version", type=int, help="model version (default: latest)")
    version.add_argument("--label", help="model version label, e.g. stable")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds per call")
    parser.add_argument("--ca", help="server CA bundle (PEM) for TLS")
    parser.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--key", help="client private key (PEM) for mutual TLS")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system roots (gRPC)")
    parser.add_argument("--server-name", help="TLS server name to verify instead of the host")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="extra gRPC metadata / HTTP header (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify image files; prints top-k per image")
    _common(predict)
    predict.add_argument("images", nargs="+", type=Path, help="JPEG/PNG files")
    predict.add_argument("--signature", default="serving_default")
    predict.add_argument("--input", default="images", help="input alias for the encoded images")
    predict.add_argument("--top-k", type=int, default=3, help="classes to print per image")
    predict.add_argument("--labels", type=Path, help="text file: one class name per line, by index")
    status = commands.add_parser("status", help="version states; exit 1 unless one is AVAILABLE")
    _common(status)
    metadata = commands.add_parser("metadata", help="signatures: inputs and outputs")
    _common(metadata)
    return parser


def _client(args: argparse.Namespace) -> Client:
    headers: dict[str, str] = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"Expected --header KEY=VALUE. Received: {item!r}")
        headers[key] = value
    tls: TLSConfig | bool | None = None
    if args.ca or args.cert or args.key or args.server_name:
        tls = TLSConfig(ca=args.ca, cert=args.cert, key=args.key, server_name=args.server_name)
    elif args.tls:
        tls = True
    return Client(args.target, args.model, version=args.version, version_label=args.label,
                  timeout=args.timeout, tls=tls, headers=headers or None)


class _UsageError(Exception):
    pass


def _top_k(outputs: dict[str, np.ndarray[Any, Any]], count: int, k: int,
           names: dict[int, str]) -> list[list[tuple[str, float]]]:
    probabilities = outputs.get("probabilities")
    if probabilities is None:
        raise ServingError(f"Expected a 'probabilities' output. Received: outputs {sorted(outputs)}")
    if "class_id" in outputs and "class_name" in outputs:
        for class_id, name in zip(outputs["class_id"].reshape(-1), outputs["class_name"].reshape(-1),
                                  strict=False):
            names.setdefault(int(class_id), name.decode() if isinstance(name, bytes) else str(name))
    probs = np.asarray(probabilities, dtype=np.float64).reshape(count, -1)
    result = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        result.append([(names.get(int(i), str(int(i))), float(row[i])) for i in order])
    return result


def _predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise _UsageError(f"Expected --top-k >= 1. Received: {args.top_k}")
    images = [path.read_bytes() for path in args.images]
    names: dict[int, str] = {}
    if args.labels:
        names = dict(enumerate(args.labels.read_text().splitlines()))
    with _client(args) as client:
        outputs = client.predict({args.input: np.array(images, dtype=object)}, signature=args.signature)
    for path, top in zip(args.images, _top_k(outputs, len(images), args.top_k, names), strict=True):
        print(f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in top))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status()
    for version in status.versions:
        line = f"{status.model} version {version.version}: {version.state}"
        if version.error_code != "OK":
            line += f" ({version.error_code}: {version.error_message})"
        print(line)
    if not status.ready:
        print(f"error: model {status.model!r} has no AVAILABLE version", file=sys.stderr)
        return 1
    return 0


def _spec_text(spec: TensorSpec) -> str:
    shape = "unknown rank" if spec.shape is None else "[" + ", ".join(
        "?" if d is None else str(d) for d in spec.shape) + "]"
    return f"{spec.name}: {spec.dtype} {shape}"


def _metadata(args: argparse.Namespace) -> int:
    with _client(args) as client:
        meta: ModelMetadata = client.metadata()
    print(f"model {meta.model} version {meta.version}")
    for name, signature in meta.signatures.items():
        print(f"signature {name} ({signature.method_name})")
        for spec in signature.inputs.values():
            print(f"  input  {_spec_text(spec)}")
        for spec in signature.outputs.values():
            print(f"  output {_spec_text(spec)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"predict": _predict, "status": _status, "metadata": _metadata}[args.command]
    try:
        return command(args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ServingError, OSError, ValueError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
