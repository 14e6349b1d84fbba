"""Benchmark of serving.model_server on loopback, next to a bare gRPC echo server (the Python floor).

Usage: ``python bench/server_bench.py [--seconds 4] [--rounds 5] [--concurrency 4] [--model DIR] [--baseline DIR]``

Starts two server processes and drives them from this process with ``--concurrency`` threads, in
``--rounds`` interleaved rounds (echo, gRPC predict, REST predict, echo, ...) so that load from other
programs on the machine hits every row alike; the median round is reported:

- ``echo``: a bare ``grpc.server`` that returns each request's bytes (no parsing, no model);
- ``grpc predict``: ``python -m serving.model_server`` serving the tiny half_plus_two model (our rebuild of
  TF Serving's saved_model_half_plus_two_cpu) over gRPC;
- ``rest predict``: the same server over REST (HTTP/1.1 keep-alive, one connection per thread).

The gRPC clients send the same pre-serialized ``PredictRequest`` bytes and do not parse responses, so
client cost is identical for echo and predict and the difference is the server's. Prints requests/s and
p50/p99 latency per row, and gRPC predict as a percentage of the echo floor.

``--baseline DIR`` adds a row, interleaved with the others: gRPC predict on the model server of another
checkout (``git worktree add /tmp/base <revision>``), to measure a change side by side.

``--load`` (issue 21) measures instead a fixed count of requests (``--count``) from ``--clients`` concurrent
clients, each request drawn (seeded) from a mix of sizes (``LOAD_MIX``: mostly small, some of 64 Ki and
1 Mi floats sent as ``tensor_content``), against the echo server and the model server in turn (echo, predict,
echo, predict, ...: ``--rounds``); prints req/s, p50/p99 and errors by status for each, predict as a
percentage of echo, and the model server's peak resident memory (VmHWM, ``/proc/<pid>/status``) beside
its memory budget (``--request_memory_budget_bytes``, default 10% of the container's memory).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent import futures
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_server(port: int, threads: int) -> None:
    """Run a bare gRPC server that answers every Predict call with the request bytes (blocks)."""
    import grpc

    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(lambda request, context: request)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])  # as the model server
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("echo ready", flush=True)
    server.wait_for_termination()


def _request_bytes() -> bytes:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=3)
    tensor.float_val.extend([1.0, 2.0, 5.0])
    return request.SerializeToString()


#: Request sizes (float elements) and their shares in ``--load``.
LOAD_MIX = ((3, 0.70), (1024, 0.20), (65536, 0.09), (1 << 20, 0.01))


def _load_payloads(count: int, seed: int = 0) -> list[bytes]:
    import random

    from tensorflow_serving.apis import predict_pb2

    by_size = {}
    for size, _share in LOAD_MIX:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        tensor = request.inputs["x"]
        tensor.dtype = 1  # DT_FLOAT
        tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = (float(size % 7) * _ones(size)).tobytes()
        by_size[size] = request.SerializeToString()
    draw = random.Random(seed).choices([s for s, _ in LOAD_MIX], [w for _, w in LOAD_MIX], k=count)
    return [by_size[size] for size in draw]


def _ones(size: int) -> Any:
    import numpy as np

    return np.ones(size, np.float32)


def _drive_count(call: Callable[[bytes], object], payloads: list[bytes], clients: int) -> dict[str, Any]:
    """Send every payload once from ``clients`` threads; returns req/s, p50/p99 ms and status counts."""
    import grpc

    latencies: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()
    position = iter(range(len(payloads)))

    def worker() -> None:
        while True:
            with lock:
                index = next(position, None)
            if index is None:
                return
            start = time.perf_counter()
            try:
                call(payloads[index])
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                codes[code] = codes.get(code, 0) + 1

    begin = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    quantiles = statistics.quantiles(sorted(latencies), n=100)
    return {"rps": len(payloads) / elapsed, "p50": quantiles[49] * 1000, "p99": quantiles[98] * 1000,
            "codes": codes}


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def load_main(args: argparse.Namespace, echo_port: int, grpc_port: int, server_pid: int) -> int:
    """``--load``: see the module docstring."""
    import grpc

    from serving.model_server.budget import default_budget_bytes

    payloads = _load_payloads(args.count)
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    rows: dict[str, list[dict[str, Any]]] = {"grpc echo (floor)": [], "grpc predict": []}
    before = _vm_kib(server_pid, "VmRSS")
    with grpc.insecure_channel(f"127.0.0.1:{echo_port}", options=options) as echo_channel, \
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) as server_channel:
        calls = {"grpc echo (floor)": echo_channel.unary_unary(PREDICT_METHOD),
                 "grpc predict": server_channel.unary_unary(PREDICT_METHOD)}
        for call in calls.values():  # warm up
            for payload in payloads[:20]:
                call(payload, timeout=60)
        for _ in range(args.rounds):
            for name, call in calls.items():
                rows[name].append(_drive_count(functools.partial(call, timeout=60), payloads, args.clients))
    peak = _vm_kib(server_pid, "VmHWM")
    budget = args.budget or default_budget_bytes()
    mix = ", ".join(f"{share:.0%} x {size}" for size, share in LOAD_MIX)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.clients} clients, {args.count} requests "
          f"per row and round (floats per request: {mix}), {args.rounds} interleaved rounds, median shown")
    print(f"{'':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    medians = {}
    for name, runs in rows.items():
        middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        medians[name] = middle["rps"]
        codes = {}
        for run in runs:
            for code, n in run["codes"].items():
                codes[code] = codes.get(code, 0) + n
        print(f"{name:<20}{middle['rps']:>9.0f}{middle['p50']:>9.2f}{middle['p99']:>9.2f}  {codes}")
    ratios = [p["rps"] / e["rps"] for p, e in zip(rows["grpc predict"], rows["grpc echo (floor)"], strict=True)]
    print(f"grpc predict = {100 * medians['grpc predict'] / medians['grpc echo (floor)']:.0f}% of the echo floor's "
          f"requests/s (per round: {', '.join(f'{100 * r:.0f}%' for r in ratios)})")
    print(f"model server resident memory: {before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB "
          f"(rise {(peak - before) / 1024:.0f} MiB); request memory budget {budget / 2**20:.0f} MiB")
    return 0


def _drive(call: Callable[[], object], seconds: float, concurrency: int) -> tuple[float, float, float, int]:
    """Run ``call`` from ``concurrency`` threads for ``seconds``; returns (req/s, p50 ms, p99 ms, errors)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        local = latencies[i]
        while True:
            start = time.perf_counter()
            if start >= stop:
                return
            try:
                call()
            except Exception:  # counted, not fatal: the benchmark reports them
                errors[i] += 1
                continue
            local.append(time.perf_counter() - start)

    for _ in range(50):  # warm up connections and code paths
        call()
    begin = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    merged = sorted(x for chunk in latencies for x in chunk)
    p50 = statistics.quantiles(merged, n=100)[49] * 1000
    p99 = statistics.quantiles(merged, n=100)[98] * 1000
    return len(merged) / elapsed, p50, p99, sum(errors)


def _wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("Expected the server to become ready. Received: timeout")
        time.sleep(0.1)


def _model_ready(rest_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two", timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return False
    return any(v["state"] == "AVAILABLE" for v in body["model_version_status"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc_max_threads", type=int, default=8)
    parser.add_argument("--model", type=Path,
                        default=REPO.parent / "shared" / "upstream" / "tensorflow_serving" / "servables" / "tensorflow"
                        / "testdata" / "saved_model_half_plus_two_cpu")  # upstream's own (tests/upstream.py)
    parser.add_argument("--server-flag", dest="server_flag", action="append", default=[],
                        help="extra flag for the model server, e.g. --server-flag=--tensorflow_inter_op_parallelism=1")
    parser.add_argument("--baseline", type=Path, help="another checkout whose model server gets a row too")
    parser.add_argument("--load", action="store_true", help="fixed-count load with mixed sizes (issue 21)")
    parser.add_argument("--clients", type=int, default=8, help="--load: concurrent clients")
    parser.add_argument("--count", type=int, default=2000, help="--load: requests per row and round")
    parser.add_argument("--budget", type=int, default=0, help="--load: the server's --request_memory_budget_bytes")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)  # internal: run the echo server
    args = parser.parse_args(argv)
    if args.echo_server:
        echo_server(args.echo_server, args.grpc_max_threads)
        return 0

    import grpc

    payload = _request_bytes()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    echo_port = _free_port()
    echo = subprocess.Popen([sys.executable, __file__, f"--echo-server={echo_port}",
                             f"--grpc_max_threads={args.grpc_max_threads}"], stdout=subprocess.PIPE, text=True, env=env)

    def model_server(checkout: Path) -> tuple[subprocess.Popen[bytes], int, int]:
        grpc_port, rest_port = _free_port(), _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             "--model_name=half_plus_two", f"--model_base_path={args.model}",
             f"--grpc_max_threads={args.grpc_max_threads}", "--file_system_poll_wait_seconds=0", *args.server_flag],
            cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        return process, grpc_port, rest_port

    if args.load and args.budget:
        args.server_flag.append(f"--request_memory_budget_bytes={args.budget}")
    server, grpc_port, rest_port = model_server(REPO)
    processes = [echo, server]
    if args.load:
        try:
            assert echo.stdout is not None
            echo.stdout.readline()
            _wait_for(lambda: _model_ready(rest_port))
            return load_main(args, echo_port, grpc_port, server.pid)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    if args.baseline:
        baseline, baseline_port, baseline_rest = model_server(args.baseline.resolve())
        processes.append(baseline)
    body = json.dumps({"instances": [1.0, 2.0, 5.0]}).encode()
    local = threading.local()

    def rest_call() -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = HTTPConnection("127.0.0.1", rest_port, timeout=30)
        connection.request("POST", "/v1/models/half_plus_two:predict", body=body)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"Expected HTTP 200. Received: {response.status} {data[:200]!r}")

    results: dict[str, list[tuple[float, float, float, int]]] = {"grpc echo (floor)": [], "grpc predict": [],
                                                                 "rest predict": []}
    if args.baseline:
        results["grpc predict (baseline)"] = []
    try:
        assert echo.stdout is not None
        echo.stdout.readline()
        _wait_for(lambda: _model_ready(rest_port))
        if args.baseline:
            _wait_for(lambda: _model_ready(baseline_rest))
        with contextlib.ExitStack() as stack:
            def unary(port: int) -> Callable[..., bytes]:  # bytes in, bytes out: no client-side parsing
                channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
                return channel.unary_unary(PREDICT_METHOD)

            calls: dict[str, Callable[[], object]] = {}
            for name, port in (("grpc echo (floor)", echo_port), ("grpc predict", grpc_port)):
                calls[name] = functools.partial(unary(port), payload, timeout=30)
            calls["rest predict"] = rest_call
            if args.baseline:
                calls["grpc predict (baseline)"] = functools.partial(unary(baseline_port), payload, timeout=30)
            for _ in range(args.rounds):  # interleaved, so load from elsewhere hits every row alike
                for name, call in calls.items():
                    results[name].append(_drive(call, args.seconds, args.concurrency))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"grpcio {grpc.__version__}; {args.concurrency} client threads; {args.rounds} interleaved rounds of "
          f"{args.seconds:.0f} s per row, median round shown")
    print(f"{'':<24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    medians = {}
    for name, runs in results.items():
        rps, p50, p99, errors = (statistics.median(r[i] for r in runs) for i in range(4))
        medians[name] = rps
        print(f"{name:<24}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}{errors:>8.0f}")
    ratios = [p[0] / e[0] for p, e in zip(results["grpc predict"], results["grpc echo (floor)"], strict=True)]
    print(f"grpc predict = {100 * medians['grpc predict'] / medians['grpc echo (floor)']:.0f}% of the echo floor's "
          f"requests/s (per round: {', '.join(f'{100 * r:.0f}%' for r in ratios)})")
    if args.baseline:
        versus = [p[0] / b[0] for p, b in zip(results["grpc predict"], results["grpc predict (baseline)"], strict=True)]
        print(f"grpc predict = {statistics.median(versus):.2f}x the baseline's requests/s "
              f"(per round: {', '.join(f'{r:.2f}x' for r in versus)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
