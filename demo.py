"""The main job end to end on the embedded digits: search with two local workers, export, serve, predict.

    .venv/bin/python demo.py            (what `python3 dev.py demo` runs)

1. ``python -m trainer launch --workers 2 -- search ...`` searches on scikit-learn's digits and the
   chief exports the best model to ``models/digits/<version>/``;
2. ``python -m serving.model_server`` serves ``models/digits`` over gRPC and REST on free loopback ports;
3. the thin client (no TensorFlow) predicts the held-out test images over both transports, and the
   demo prints the accuracy, the agreement between transports and a few client and server metrics;
4. the server is stopped with SIGTERM.

The demo touches the trainer and the server only through their command lines, the export directory
and the network, as a deployment does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from serving.client import Client, ServingError

ROOT = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _wait_until_available(client: Client, server: subprocess.Popen[bytes], timeout: float) -> int:
    """Poll the model status until a version is AVAILABLE (a 200 alone can mean LOADING)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the model server exited early with status {server.returncode}")
        try:
            status = client.status(timeout=5)
            if status.available_versions:
                return status.available_versions[-1]
            last = ", ".join(f"version {v.version}: {v.state}" for v in status.versions)
        except ServingError as exc:  # still starting: unavailable, or the model not loaded yet
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)  # polling interval, not synchronisation: each pass checks the real state
    raise SystemExit(f"no AVAILABLE version within {timeout:.0f}s (last: {last})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--export-base", type=Path, default=Path("models"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()

    _step(f"1/3 search with {args.workers} local workers (MultiWorkerMirroredStrategy), export the best model")
    search = [
        python, "-m", "trainer", "launch", "--workers", str(args.workers), "--",
        "search", "--model-name", "digits", "--export-base", str(args.export_base), "--run-dir", str(args.run_dir),
        "--max-trials", str(args.max_trials), "--epochs", str(args.epochs),
    ]
    print(" ".join(search[1:]), flush=True)
    status = subprocess.call(search, env=env)
    report = args.run_dir / "digits" / "report"
    if status == 3:  # the trainer's "finished, not published": the served version stays (docs/trainer.md)
        decision = json.loads((report / "publish.json").read_text())
        print(f"the publish gate kept version {decision['current_version']}: {decision['reason']}")
    elif status != 0:
        print("the search failed", file=sys.stderr)
        return 1
    summary = json.loads((report / "summary.json").read_text())
    held_out = json.loads((report / "held_out.json").read_text())
    print(f"search done in {time.monotonic() - started:.0f}s; exported {summary['export']}")

    _step("2/3 serve models/digits with the local model server (gRPC + REST)")
    grpc_port, rest_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [python, "-m", "serving.model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--model_name=digits", f"--model_base_path={(args.export_base / 'digits').resolve()}",
         f"--monitoring_config_file={ROOT / 'serving' / 'config' / 'monitoring.config'}"],
        env=env,
    )
    try:
        registry = CollectorRegistry()
        with Client(f"127.0.0.1:{grpc_port}", model="digits", registry=registry) as grpc_client, \
                Client(f"http://127.0.0.1:{rest_port}", model="digits", registry=registry) as rest_client:
            with Client(f"127.0.0.1:{grpc_port}", model="digits", registry=CollectorRegistry()) as probe:
                version = _wait_until_available(probe, server, timeout=180)  # its own registry: not in the figures
            print(f"serving digits version {version} on gRPC :{grpc_port} and REST :{rest_port}")

            _step(f"3/3 predict {len(held_out)} held-out images with the thin client over both transports")
            labels = np.array([item["label"] for item in held_out])
            names = summary["class_names"]
            results = {}
            for transport, client in (("grpc", grpc_client), ("rest", rest_client)):
                ids = []
                for start in range(0, len(held_out), 32):
                    batch = [Path(item["path"]).read_bytes() for item in held_out[start : start + 32]]
                    ids.append(np.asarray(client.predict({"images": batch})["class_id"]))
                results[transport] = np.concatenate(ids)
                accuracy = float(np.mean(results[transport] == labels))
                print(f"{transport:>4}: accuracy {accuracy:.4f} on {len(labels)} images the search never saw")
            agree = float(np.mean(results["grpc"] == results["rest"]))
            print(f"gRPC and REST agree on {agree:.1%} of the predictions")
            sample = grpc_client.predict({"images": [Path(held_out[0]["path"]).read_bytes()]})
            first = held_out[0]
            print(f"example: {first['path']} (label {names[first['label']]}) -> {sample['class_name'][0]!r} "
                  f"p={float(np.max(sample['probabilities'][0])):.3f}")
            _print_metrics(registry)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; report in {report}")
    return 0


def _print_metrics(registry: CollectorRegistry) -> None:
    print("client metrics:")
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_requests_total", "_request_duration_seconds_sum",
                                     "_request_duration_seconds_count")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                print(f"  {sample.name}{{{labels}}} {sample.value:g}")


if __name__ == "__main__":
    sys.exit(main())
