"""TLS: server CA and client certificates (mutual TLS), with certificates made here by openssl.

gRPC runs against the real local model server with TF Serving's ``--ssl_config_file`` (an ``SSLConfig``
text proto: server_key, server_cert, custom_ca, client_verify; model_servers/server.cc). TF Serving's REST
port has no TLS, so https is tested against a TLS-terminating stand-in (the REST server of servers.py
behind Python's ssl), as a proxy or mesh would terminate it."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from serving.client import Client, RetryPolicy, TLSConfig, Unavailable
from tests.serving.client.conftest import start_model_server
from tests.serving.client.models import MODEL, copy_version
from tests.serving.client.servers import ToyModel, rest_server

OPENSSL = shutil.which("openssl") or "openssl"  # Debian's base system ships it


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=tfstack test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=d)
    return d


def _quoted(path: Path) -> str:
    return '"' + path.read_text().replace("\n", "\\n") + '"'


@pytest.fixture(scope="module")
def mtls_grpc(pki: Path, toy_versions: dict[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real model server requiring client certificates signed by the test CA."""
    root = tmp_path_factory.mktemp("tls-served")
    base = root / MODEL
    base.mkdir()
    copy_version(toy_versions[1], base, 1)
    config = root / "ssl.config"
    config.write_text(f"server_key: {_quoted(pki / 'server.key')}\nserver_cert: {_quoted(pki / 'server.pem')}\n"
                      f"custom_ca: {_quoted(pki / 'ca.pem')}\nclient_verify: true\n")
    server = start_model_server(f"--model_name={MODEL}", f"--model_base_path={base}", f"--ssl_config_file={config}")
    try:
        yield f"127.0.0.1:{server.grpc_port}"
    finally:
        server.stop(grace=5.0)


def test_grpc_mutual_tls(mtls_grpc: str, pki: Path) -> None:
    tls = TLSConfig(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
    with Client(mtls_grpc, "toy", tls=tls, registry=CollectorRegistry()) as client:
        assert client.status().ready
        assert client.predict({"x": [[1.0, 2.0, 3.0]]})["y"].tolist() == [[3.0, 5.0, 7.0]]
    # PEM bytes work as well as paths
    tls_bytes = TLSConfig(ca=(pki / "ca.pem").read_bytes(), cert=(pki / "client.pem").read_bytes(),
                          key=(pki / "client.key").read_bytes())
    with Client(mtls_grpc, "toy", tls=tls_bytes, registry=CollectorRegistry()) as client:
        assert client.ready()


def test_grpc_tls_refuses_unknown_ca_and_missing_client_cert(mtls_grpc: str, pki: Path) -> None:
    policy = RetryPolicy(attempts=1)
    without_client_cert = TLSConfig(ca=pki / "ca.pem")
    with Client(mtls_grpc, "toy", tls=without_client_cert, retry=policy, timeout=5,
                registry=CollectorRegistry()) as client, pytest.raises(Unavailable):
        client.status()
    wrong_ca = TLSConfig(ca=pki / "client.pem", cert=pki / "client.pem", key=pki / "client.key")
    with Client(mtls_grpc, "toy", tls=wrong_ca, retry=policy, timeout=5,
                registry=CollectorRegistry()) as client, pytest.raises(Unavailable):
        client.status()


def test_https_with_client_certificate(pki: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    with rest_server(ToyModel(), ssl_context=context) as https:
        assert https.startswith("https://")
        tls = TLSConfig(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        with Client(https, "toy", tls=tls, registry=CollectorRegistry()) as client:
            assert client.status().ready
        with Client(https, "toy", tls=TLSConfig(ca=pki / "ca.pem"), retry=RetryPolicy(attempts=1),
                    timeout=5, registry=CollectorRegistry()) as client, pytest.raises(Unavailable):
            client.status()


def test_http_target_with_tls_settings_is_refused(pki: Path) -> None:
    with pytest.raises(ValueError, match="https://"):
        Client("http://127.0.0.1:1", "toy", tls=TLSConfig(ca=pki / "ca.pem"))

