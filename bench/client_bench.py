"""Benchmarks the thin client against TensorFlow's own tooling, side by side in one run.

    .venv/bin/python bench/client_bench.py            # full run (about a minute)
    .venv/bin/python bench/client_bench.py --quick    # fewer repetitions

1. Encoding a float32 (N, 224, 224, 3) batch into PredictRequest bytes: the client, TensorFlow's
   ``tf.make_tensor_proto`` (alone, and with the PredictRequest serialised), and a plain numpy copy of
   the same bytes (the floor).
2. Decoding a PredictResponse answered with typed ``float_val`` (as TF Serving does): the client,
   protobuf parse + ``tf.make_ndarray``, and the numpy copy floor.
3. Import time in a fresh interpreter: ``import serving.client`` vs
   ``from tensorflow_serving.apis import predict_pb2``.
4. Per-call latency on loopback for a small request (a server in a separate process): the client's
   ``predict`` (validation from cached metadata, encode, call, decode to numpy, metrics) vs a raw
   generated stub called with a prebuilt request.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best-of-``repeats`` seconds per function (timeit's convention: the minimum is the run least
    disturbed by other processes), the functions taking turns so machine noise hits them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            gc.disable()
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
            gc.enable()
    return [min(t) for t in times]


def bench_encoding(sizes: list[int], repeats: int) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.wire.codec import encode_model_spec, encode_predict_request

    print("\n== 1. encode a float32 (N, 224, 224, 3) batch into a PredictRequest (best of runs; x = / copy) ==")
    print(f"{'N':>3} {'MB':>6} | {'numpy copy':>10} | {'client':>10} {'x':>5} | "
          f"{'make_tensor_proto':>17} {'x':>5} | {'+ request bytes':>15} {'x':>5}")
    spec = encode_model_spec("digits", None, None, "predict_pixels")
    for n in sizes:
        x = np.random.default_rng(n).random((n, 224, 224, 3), dtype=np.float32)

        def tf_request(x: np.ndarray = x) -> bytes:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "digits"
            request.model_spec.signature_name = "predict_pixels"
            request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(x))
            return request.SerializeToString()

        # the floor and the client take turns; TensorFlow's much slower calls are timed apart, so
        # their allocations do not disturb the pair being compared
        copy, ours = _interleaved([x.tobytes, lambda x=x: encode_predict_request(spec, {"pixels": x})], repeats)
        make, full = _interleaved([lambda x=x: tf.make_tensor_proto(x), tf_request], max(3, repeats // 3))
        print(f"{n:>3} {x.nbytes / 1e6:>6.1f} | {copy * 1e3:>8.2f}ms | {ours * 1e3:>8.2f}ms {ours / copy:>5.2f} | "
              f"{make * 1e3:>15.2f}ms {make / copy:>5.1f} | {full * 1e3:>13.2f}ms {full / copy:>5.1f}")


def bench_decoding(sizes: list[int], repeats: int) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.wire.codec import decode_predict_response

    print("\n== 2. decode a PredictResponse with typed float_val, as TF Serving answers (best of runs) ==")
    print(f"{'shape':>18} {'MB':>6} | {'numpy copy':>10} | {'client':>10} {'x':>5} | "
          f"{'FromString+make_ndarray':>23} {'x':>5}")
    shapes = [(n, 1000) for n in (1, 32)] + [(n, 224, 224, 3) for n in sizes]
    for shape in shapes:
        y = np.random.default_rng(1).random(shape, dtype=np.float32)
        response = predict_pb2.PredictResponse()
        tensor = response.outputs["probabilities"]
        tensor.dtype = tf.float32.as_datatype_enum
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.float_val.extend(y.reshape(-1))
        data = response.SerializeToString()
        assert np.array_equal(decode_predict_response(data)[0]["probabilities"], y)

        def official(data: bytes = data) -> np.ndarray:
            parsed = predict_pb2.PredictResponse.FromString(data)
            return tf.make_ndarray(parsed.outputs["probabilities"])

        copy, ours = _interleaved([y.tobytes, lambda data=data: decode_predict_response(data)], repeats)
        (theirs,) = _interleaved([official], max(3, repeats // (4 if y.nbytes > 5e6 else 1)))
        print(f"{shape!s:>18} {y.nbytes / 1e6:>6.2f} | {copy * 1e3:>8.3f}ms | {ours * 1e3:>8.3f}ms "
              f"{ours / copy:>5.2f} | {theirs * 1e3:>21.3f}ms {theirs / copy:>5.1f}")


def _import_seconds(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def bench_import(repeats: int) -> None:
    """``from serving.client import Client`` beside ``tensorflow_serving.apis``, interleaved in one run."""
    print(f"\n== 3. import time in a fresh interpreter (best of {repeats}, interleaved) ==")
    statements = {
        "from serving.client import Client": "from serving.client import Client",
        "  + first Client (gRPC; numpy, grpc, codec)":
            "from serving.client import Client; Client('127.0.0.1:1', 'm').close()",
        "import numpy (alone, for scale)": "import numpy",
        "from tensorflow_serving.apis import predict_pb2": "from tensorflow_serving.apis import predict_pb2",
    }
    best = {label: float("inf") for label in statements}
    for _ in range(repeats):
        for label, statement in statements.items():
            best[label] = min(best[label], _import_seconds(statement))
    ours, theirs = best["from serving.client import Client"], best["from tensorflow_serving.apis import predict_pb2"]
    for label, seconds in best.items():
        print(f"{label:<48} {seconds * 1e3:>8.1f} ms")
    verdict = "met" if ours < 0.1 else "NOT met"
    print(f"tensorflow_serving.apis / client import: {theirs / ours:.0f}x; target < 100 ms: {verdict}")


_SERVER = textwrap.dedent(
    """
    import sys
    from concurrent import futures
    import grpc
    import numpy as np
    from serving.wire.proto import get_model_metadata_pb2, predict_pb2, types_pb2

    meta = get_model_metadata_pb2.GetModelMetadataResponse()
    meta.model_spec.name = "bench"
    meta.model_spec.version.value = 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    sig = sigs.signature_def["serving_default"]
    for group, name, dims in (("inputs", "x", (-1, 3)), ("outputs", "y", (-1, 3))):
        info = getattr(sig, group)[name]
        info.dtype = types_pb2.DT_FLOAT
        for d in dims:
            info.tensor_shape.dim.add(size=d)
    meta.metadata["signature_def"].type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    meta.metadata["signature_def"].value = sigs.SerializeToString()
    META = meta.SerializeToString()
    answer = predict_pb2.PredictResponse()
    answer.model_spec.name = "bench"
    out = answer.outputs["y"]
    out.dtype = types_pb2.DT_FLOAT
    out.tensor_shape.dim.add(size=1)
    out.tensor_shape.dim.add(size=3)
    out.float_val.extend([1.0, 2.0, 3.0])
    ANSWER = answer.SerializeToString()

    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(lambda request, context: ANSWER),
        "GetModelMetadata": grpc.unary_unary_rpc_method_handler(lambda request, context: META),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None)
    """
)


def bench_latency(calls: int) -> None:
    import grpc
    from prometheus_client import CollectorRegistry

    from serving.client import Client
    from serving.wire.codec import to_tensor_proto
    from serving.wire.proto import predict_pb2, prediction_service_pb2_grpc

    print(f"\n== 4. per-call latency on loopback, small request (1, 3) float32, {calls} calls each ==")
    print("raw stub: generated PredictionServiceStub, prebuilt PredictRequest, response left as a message;")
    print("client: Client.predict with validation (cached metadata), encode, call, decode to numpy, metrics")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        target = f"127.0.0.1:{port}"
        x = np.array([[1.0, 2.0, 3.0]], np.float32)
        channel = grpc.insecure_channel(target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "bench"
        request.inputs["x"].CopyFrom(to_tensor_proto(x))
        client = Client(target, "bench", registry=CollectorRegistry())
        assert client.predict({"x": x})["y"].tolist() == [[1.0, 2.0, 3.0]]
        stub.Predict(request, timeout=10)

        def stub_block() -> None:
            for _ in range(50):
                stub.Predict(request, timeout=10)

        def client_block() -> None:
            for _ in range(50):
                client.predict({"x": x}, timeout=10)

        raw_times: list[float] = []
        ours_times: list[float] = []
        raw_cpu: list[float] = []
        ours_cpu: list[float] = []
        for block in range(calls // 50):  # blocks of 50 calls, taking turns (and turns about who goes first)
            pair = [(stub_block, raw_times, raw_cpu), (client_block, ours_times, ours_cpu)]
            for run, times, cpu in pair if block % 2 == 0 else pair[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                times.append((time.perf_counter() - start) / 50)
                cpu.append((time.process_time() - start_cpu) / 50)
        for label, pick in (("median block", statistics.median), ("best block", min)):
            raw, ours = pick(raw_times), pick(ours_times)
            print(f"{label:>12}: raw generated stub {raw * 1e6:>7.1f} us/call | client.predict "
                  f"{ours * 1e6:>7.1f} us/call | overhead {100 * (ours / raw - 1):+.1f}%")
        raw, ours = statistics.median(raw_cpu), statistics.median(ours_cpu)
        print(f"{'caller CPU':>12}: raw generated stub {raw * 1e6:>7.1f} us/call | client.predict "
              f"{ours * 1e6:>7.1f} us/call | +{(ours - raw) * 1e6:.1f} us of CPU per call (median block, "
              "all threads of the calling process)")
        client.close()
        channel.close()
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="batch sizes N")
    parser.add_argument("--skip", nargs="*", default=[], choices=["encode", "decode", "import", "latency"])
    args = parser.parse_args(argv)
    repeats = 7 if args.quick else 25
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    if "encode" not in args.skip:
        bench_encoding(args.sizes, repeats)
    if "decode" not in args.skip:
        bench_decoding(args.sizes, repeats)
    if "import" not in args.skip:
        bench_import(3 if args.quick else 5)
    if "latency" not in args.skip:
        bench_latency(1000 if args.quick else 4000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
