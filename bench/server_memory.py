"""Resident memory of serving.model_server under concurrent requests at the per-request limit (issue 21).

Usage: ``python bench/server_memory.py [--concurrency 8] [--scale 1.0] [--transport grpc|rest]``

Starts ``python -m serving.model_server`` with default flags (the half_plus_two model), reads its resident
memory from ``/proc/<pid>/status`` (VmRSS) once it answered a small request, then sends ``--concurrency``
requests at once, each declaring the largest tensor one request may (gRPC: a ``float`` tensor just under the
256 MiB per-request limit, sent as a few bytes with one ``float_val`` that TensorFlow repeats to fill it;
REST: a body just under the 64 MiB body limit of ``[[0],[0],...]``, the JSON that costs most to parse),
and reads the high-water mark (VmHWM). Prints one JSON line: the rise, each request's status, whether
the server answered normally after, and the budget.

``--scale S`` (0 < S <= 1) scales the request size, the memory budget (``--request_memory_budget_bytes``,
S times the default) and the expected bound alike, so a test proves the same property with less memory.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Upstream's own test model (tests/upstream.py: shared/upstream beside the checkout, or $UPSTREAM_ARTEFACTS).
MODEL = (Path(os.environ.get("UPSTREAM_ARTEFACTS") or REPO.parent / "shared" / "upstream")
         / "tensorflow_serving" / "servables" / "tensorflow" / "testdata" / "saved_model_half_plus_two_cpu")
PER_REQUEST_LIMIT = 256 * 1024 * 1024  # ServerOptions.max_decoded_request_bytes
REST_BODY_LIMIT = 64 * 1024 * 1024  # ServerOptions.max_request_bytes
BOUND = 3 * 1024**3  # issue 21's "Done when": the rise stays below 3 GiB with default flags


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _grpc_request(elements: int) -> bytes:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=elements)
    tensor.float_val.append(1.0)
    return request.SerializeToString()


def _rest(port: int, body: bytes, timeout: float = 300.0) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict", data=body,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_ready(process: subprocess.Popen[str], lines: list[str]) -> None:
    deadline = time.monotonic() + 180
    while not any("serving.model_server ready" in line for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Expected the server to start. Received: exit {process.poll()}, {lines[-5:]}")
        time.sleep(0.1)  # polling the log


def measure(concurrency: int, scale: float, transport: str) -> dict[str, Any]:
    """Run the experiment once; see the module docstring."""
    import grpc

    from serving.model_server.budget import default_budget_bytes

    grpc_port, rest_port = _free_port(), _free_port()
    budget = default_budget_bytes()
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=half_plus_two",
             f"--model_base_path={MODEL}", "--file_system_poll_wait_seconds=0"]
    if scale != 1.0:
        budget = int(budget * scale)
        flags.append(f"--request_memory_budget_bytes={budget}")
    process = subprocess.Popen([sys.executable, "-m", "serving.model_server", *flags], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        _wait_ready(process, lines)
        assert _rest(rest_port, b'{"instances": [1.0, 2.0]}')[0] == 200
        before = _status_kib(process.pid, "VmRSS") * 1024
        codes: list[str] = []
        if transport == "grpc":
            elements = int(PER_REQUEST_LIMIT * scale) // 4 - 16
            payload = _grpc_request(elements)
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[
                ("grpc.max_receive_message_length", -1)])
            call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")

            def send() -> str:
                try:
                    call(payload, timeout=600)
                    return "OK"
                except grpc.RpcError as exc:
                    return exc.code().name
        else:
            rows = (int(REST_BODY_LIMIT * scale) - 32) // 4
            body = b'{"instances": [' + b",".join([b"[0]"] * rows) + b"]}"

            def send() -> str:
                return str(_rest(rest_port, body)[0])

        threads = [threading.Thread(target=lambda: codes.append(send())) for _ in range(concurrency)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - start
        peak = _status_kib(process.pid, "VmHWM") * 1024
        after = _rest(rest_port, b'{"instances": [1.0, 2.0]}')
        return {
            "transport": transport, "concurrency": concurrency, "scale": scale, "budget": budget,
            "rss_before": before, "vmhwm_after": peak, "rise": peak - before,
            "bound": int(BOUND * scale), "codes": sorted(codes), "seconds": round(seconds, 2),
            "after_ok": after == (200, {"predictions": [2.5, 3.0]}), "cpus": os.cpu_count(),
        }
    finally:
        process.kill()
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--transport", choices=["grpc", "rest"], default="grpc")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        parser.error(f"Expected 0 < --scale <= 1. Received: {args.scale}")
    result = measure(args.concurrency, args.scale, args.transport)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
