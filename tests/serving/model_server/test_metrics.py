"""TF Serving's metrics: names, labels, units, buckets and when each is recorded, against upstream's source.

Expectations come from tensorflow/serving at 9d981c5c (servables/tensorflow/util.cc,
model_servers/prediction_service_impl.cc and http_server.cc, saved_model_warmup_util.cc,
batching/batching_util.h, batching/batching_session.cc, util/prometheus_exporter.cc) and tensorflow's
core/lib/monitoring/sampler.cc and cc/saved_model/loader.cc; each test names the one it checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from serving.model_server.metrics import ServerMetrics, exponential_buckets
from tests.serving.model_server.conftest import (
    add_broken_version,
    add_version,
    half_plus_two_warmup_record,
    http,
    write_tfrecord,
)

METRICS_PATH = "/monitoring/prometheus/metrics"


def _line(page: str, prefix: str) -> str:
    found = [line for line in page.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


def test_should_compute_tensorflows_exponential_buckets_when_upstreams_latency_parameters_are_given() -> None:
    """sampler.cc ExponentialBuckets: scale * growth^i by repeated multiplication; util.cc's comment: the
    33rd bound of (10, 1.8, 33) is "~20 minutes" of microseconds."""
    bounds = exponential_buckets(10, 1.8, 33)
    assert len(bounds) == 33 and bounds[:4] == pytest.approx((10, 18, 32.4, 58.32))
    assert 20 * 60e6 < bounds[-1] < 30 * 60e6
    assert exponential_buckets(1, 2, 14)[-1] == 2**13  # batching_util.h: [1*2^0, ..., 1*2^13, DBL_MAX]


def test_should_write_histograms_as_prometheus_exporter_does_when_a_latency_is_recorded() -> None:
    """prometheus_exporter.cc: '/' -> ':', bounds with six significant digits (absl::StrCat), +Inf last,
    cumulative counts; tensorflow's Histogram::Add puts a value equal to a bound in the next bucket."""
    metrics = ServerMetrics()
    metrics.observe("m", "predict", "grpc", "OK", 18e-6)  # 18 us: exactly the second bound
    page = metrics.exposition()[0].decode()
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",'
    assert _line(page, prefix + 'le="18"}') == prefix + 'le="18"} 0'
    assert _line(page, prefix + 'le="32.4"}') == prefix + 'le="32.4"} 1'
    assert _line(page, prefix + 'le="1.47476e+09"}').endswith(" 1")
    assert _line(page, prefix + 'le="+Inf"}').endswith(" 1")
    assert len([line for line in page.splitlines() if line.startswith(prefix)]) == 34
    assert ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 1' in page
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in page


def test_should_escape_label_values_when_a_model_name_holds_quotes() -> None:
    metrics = ServerMetrics()
    metrics.observe('a"b\\c\nd', "predict", "grpc", "NOT_FOUND", 0.001)
    page = metrics.exposition()[0].decode()
    assert ':tensorflow:serving:request_count{model_name="a\\"b\\\\c\\nd",status="NOT_FOUND"} 1' in page


@pytest.mark.parametrize(("method", "transport", "api", "recorded"), [
    ("predict", "grpc", "Predict", True), ("classify", "grpc", "Classify", True), ("regress", "grpc", "Regress", True),
    ("metadata", "grpc", None, False), ("status", "grpc", None, False), ("reload", "grpc", None, False),
    ("predict", "rest", "predict", True), ("regress", "rest", "regress", True), ("metadata", "rest", "", True),
    ("status", "rest", "", True),
])
def test_should_record_where_tf_serving_records_when_each_api_answers(
    method: str, transport: str, api: str | None, recorded: bool
) -> None:
    """prediction_service_impl.cc records Predict/Classify/Regress only; http_server.cc every /v1/ request,
    with the URL's verb as API (empty for GETs); latency only for OK answers."""
    metrics = ServerMetrics()
    metrics.observe("m", method, transport, "OK", 0.002)
    metrics.observe("m", method, transport, "INVALID_ARGUMENT", 0.002)
    entrypoint = transport.upper()
    assert metrics.request_count.value("m", "OK") == (1 if recorded else None)
    assert metrics.request_count.value("m", "INVALID_ARGUMENT") == (1 if recorded else None)
    if recorded:
        histogram = metrics.request_latency.value("m", api, entrypoint)
        assert histogram is not None and sum(histogram.counts) == 1  # the failed call recorded no latency
        assert histogram.total == pytest.approx(2000)  # microseconds


@pytest.fixture
def metrics_config(tmp_path: Path) -> Path:
    path = tmp_path / "monitoring.config"
    path.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    return path


def _page(server: Any) -> str:
    status, page = http("GET", f"http://127.0.0.1:{server.rest_port}{METRICS_PATH}")
    assert status == 200
    return str(page)


def test_should_count_grpc_predicts_and_runtime_when_requests_arrive(
    start_server: Any, model_base: Path, metrics_config: Path
) -> None:
    server = start_server("--model_name=half_plus_two", f"--model_base_path={model_base}",
                          f"--monitoring_config_file={metrics_config}")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(_float_tensor([1.0, 2.0]))
        stub.Predict(request)
        request.model_spec.name = "other"
        with pytest.raises(grpc.RpcError):
            stub.Predict(request)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "half_plus_two"
        stub.GetModelMetadata(metadata)
    page = _page(server)
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 1' in page  # not metadata
    assert ':tensorflow:serving:request_count{model_name="other",status="NOT_FOUND"} 1' in page
    assert ':tensorflow:serving:runtime_latency_count{model_name="half_plus_two",API="Predict",runtime="TF1"} 1' in page
    version = model_base / "1"
    assert f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{version}",status="success"}} 1' in page
    latency = _line(page, f':tensorflow:cc:saved_model:load_latency{{model_path="{version}"}}')
    assert int(latency.rsplit(" ", 1)[1]) > 1000  # microseconds: a load takes more than a millisecond
    assert "model_warmup_latency" not in page  # no warm-up file: nothing recorded (saved_model_warmup_util.cc)


def _float_tensor(values: list[float]) -> Any:
    import tensorflow as tf

    return tf.make_tensor_proto(np.array(values, np.float32))


def test_should_record_failed_loads_and_warm_up_status_when_versions_load(
    start_server: Any, tmp_path: Path, metrics_config: Path
) -> None:
    """loader.cc: each LoadSavedModel counts ``success`` or ``fail`` by version path;
    saved_model_warmup_util.cc: a warm-up file read to its end records status "OK" and the records read."""
    base = tmp_path / "models" / "half_plus_two"
    version = add_version(base, 1)
    write_tfrecord(version / "assets.extra" / "tf_serving_warmup_requests", [half_plus_two_warmup_record()] * 3)
    broken = add_broken_version(base, 2)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "half_plus_two" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    server = start_server(f"--model_config_file={config}", f"--monitoring_config_file={metrics_config}",
                          "--enable_model_warmup=true", "--max_num_load_retries=1", "--load_retry_interval_micros=0")
    page = _page(server)
    assert f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{version}",status="success"}} 1' in page
    assert f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{broken}",status="fail"}} 2' in page
    assert f':tensorflow:serving:model_warmup_latency_count{{model_path="{version}",status="OK"}} 1' in page
    assert f':tensorflow:serving:model_warmup_records_read{{model_path="{version}",status="OK"}} 3' in page


def test_should_record_batch_sizes_and_queuing_when_batching_is_on(
    start_server: Any, model_base: Path, metrics_config: Path, tmp_path: Path
) -> None:
    """batching_util.h / batching_session.cc: input and processed batch sizes, queuing latency with an
    empty thread_pool_name, one wrapped run per batch."""
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 4 } batch_timeout_micros { value: 0 } "
                        "num_batch_threads { value: 1 }\n")
    server = start_server("--model_name=half_plus_two", f"--model_base_path={model_base}",
                          f"--monitoring_config_file={metrics_config}", "--enable_batching=true",
                          f"--batching_parameters_file={batching}")
    status, _ = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two:predict",
                     '{"instances": [1.0, 2.0, 3.0]}')
    assert status == 200
    page = _page(server)
    assert re.search(r'^:tensorflow:serving:batching_session:input_batch_size_bucket\{le="4"\} 1$', page, re.M)
    assert re.search(r'^:tensorflow:serving:batching_session:input_batch_size_bucket\{le="2"\} 0$', page, re.M)
    assert ":tensorflow:serving:batching_session:processed_batch_size_count{} 1" in page
    assert ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name=""} 1' in page
    assert ':tensorflow:serving:batching_session:padding_size_count{execution_batch_size="3"} 1' in page
    assert ":tensorflow:serving:batching_session:wrapped_run_count{} 1" in page
