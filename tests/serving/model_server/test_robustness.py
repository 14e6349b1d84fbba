"""Generated REST bodies never get a 5xx nor take the server down (hypothesis)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import add_version, free_port, http

_KEYS = ["x", "tag", "b64", "inputs", "instances", "signature_name", "examples", "context", "y"]
_SIGNATURES = ["", "serving_default", "predict_x_and_tag", "classify_x_to_y", "regress_x_to_y", "nope"]
_PATHS = [
    "/v1/models/hp2:predict",
    "/v1/models/hp2:classify",
    "/v1/models/hp2:regress",
    "/v1/models/hp2/versions/1:predict",
    "/v1/models/hp2/versions/99999999999999999999:predict",
    "/v1/models/hp2/labels/x:regress",
    "/v1/models/h%ZZp2:predict",
    "/v1/models/other:classify",
]

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.builds(lambda s: {"b64": s}, st.sampled_from(["AAEC", "YQ==", "not base64!", "", "%%%"]))
)
_json_value = st.recursive(
    _leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=3),
    max_leaves=16,
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "signature_name": st.sampled_from(_SIGNATURES) | _leaf,
        "instances": _json_value,
        "inputs": _json_value,
        "examples": st.lists(st.dictionaries(st.sampled_from(_KEYS), _json_value, max_size=3), max_size=3)
        | _json_value,
        "context": _json_value,
    },
)
_number = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**65), max_value=2**65)
_near_valid = st.one_of(
    st.builds(lambda v, key: {key: v}, st.lists(_number | st.lists(_number, max_size=2), min_size=1, max_size=5),
              st.sampled_from(["instances", "inputs"])),
    st.builds(lambda v, sig: {"signature_name": sig, "examples": [{"x": x} for x in v]},
              st.lists(_number | st.lists(_number, max_size=2) | st.text(max_size=3), min_size=1, max_size=4),
              st.sampled_from(["classify_x_to_y", "regress_x_to_y"])),
    st.builds(lambda xs, tags: {"signature_name": "predict_x_and_tag",
                                "instances": [{"x": x, "tag": t} for x, t in zip(xs, tags, strict=False)]},
              st.lists(_number, min_size=1, max_size=3), st.lists(_leaf, min_size=1, max_size=3)),
)
_raw = st.one_of(
    _near_valid.map(lambda b: json.dumps(b).encode()),
    _body.map(lambda b: json.dumps(b).encode()),
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(min_value=1, max_value=100_000)),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from serving.model_server import ModelServer, parse_flags

    base = tmp_path_factory.mktemp("robust") / "hp2"
    add_version(base, 1)
    options = replace(
        parse_flags(["--port=0", f"--rest_api_port={free_port()}", "--model_name=hp2", f"--model_base_path={base}"]),
        host="127.0.0.1",
    )
    instance = ModelServer(options)
    instance.start()
    yield instance
    instance.stop(grace=5.0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(path=st.sampled_from(_PATHS), body=_raw)
def test_generated_bodies_get_a_json_answer_below_500(server: Any, path: str, body: bytes) -> None:
    status, answer = http("POST", f"http://127.0.0.1:{server.rest_port}{path}", body)
    event(f"HTTP {status}")
    assert status < 500, (status, answer)
    assert isinstance(answer, dict)
    if status != 200:
        assert isinstance(answer.get("error"), str) and answer["error"]


def test_server_is_alive_after_the_generated_bodies(server: Any) -> None:
    status, body = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2:predict", '{"instances": [4.0]}')
    assert (status, body) == (200, {"predictions": [4.0]})
    assert http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2")[0] == 200


