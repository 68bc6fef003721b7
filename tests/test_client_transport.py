"""The client commands over TLS and mutual TLS to a real ModelServer (certificates made in the test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from client_models import certificate, colour_rule, scene, ssl_config, write_official  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.client.predict import predict_image  # noqa: E402
from tfsctl.client.rpc import endpoint  # noqa: E402
from tfsctl.errors import ClientError  # noqa: E402

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("certs")
    key, cert = certificate(tmp, "server", "localhost")
    ckey, ccert = certificate(tmp, "client", "tfsctl-test-client")
    return {"key": key, "cert": cert, "ckey": ckey, "ccert": ccert, "dir": tmp}


def _serve(tmp: Path, ssl: Path):  # noqa: ANN202 - served(): a context manager yielding a ready ModelServer
    from tfsctl.serving.testing import served

    return served(ready_timeout=60, grace=1, model_name="official", model_base_path=str(tmp / "official"),
                  ssl_config_file=str(ssl), file_system_poll_wait_seconds=0.2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tls")
    write_official(tmp / "official")
    img = scene(60, 80)
    Image.fromarray(img).save(tmp / "scene.png")
    return tmp


def test_tls(model_dir, certs):
    with _serve(model_dir, ssl_config(certs["dir"], certs["key"], certs["cert"])) as server:
        port = server.grpc_port
        png = model_dir / "scene.png"
        img = np.asarray(Image.open(png))
        result = predict_image(png, server=endpoint(f"localhost:{port}", ssl_ca=certs["cert"]), model="official",
                               output=None)
        np.testing.assert_array_equal(result.segmentation, colour_rule(img))
        res = runner.invoke(app, ["status", "-s", f"localhost:{port}", "-m", "official", "--ssl-ca",
                                  str(certs["cert"]), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["versions"][0]["state"] == "AVAILABLE"
        res = runner.invoke(app, ["bench", "-s", f"localhost:{port}", "-m", "official", "--ssl-ca",
                                  str(certs["cert"]), "-c", "1", "--warmup-seconds", "0", "--measure-seconds", "0.3",
                                  "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["levels"][0]["errors"] == 0
        # Plaintext to a TLS port: a clear line that suggests --ssl-ca.
        res = runner.invoke(app, ["status", "-s", f"localhost:{port}", "-m", "official", "--timeout", "5"])
        assert res.exit_code == 1
        assert "cannot reach server" in _flat(res.stderr) and "--ssl-ca" in _flat(res.stderr), res.stderr


def test_mutual_tls(model_dir, certs):
    ssl = ssl_config(certs["dir"], certs["key"], certs["cert"], client_ca=certs["ccert"])
    with _serve(model_dir, ssl) as server:
        target = f"localhost:{server.grpc_port}"
        out = model_dir / "mtls.png"
        res = runner.invoke(app, ["predict", str(model_dir / "scene.png"), "-s", target, "-m", "official",
                                  "--ssl-ca", str(certs["cert"]), "--ssl-cert", str(certs["ccert"]), "--ssl-key",
                                  str(certs["ckey"]), "-o", str(out), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["version"] == 1 and out.is_file()
        # Without a client certificate the server refuses the handshake.
        res = runner.invoke(app, ["predict", str(model_dir / "scene.png"), "-s", target, "-m", "official",
                                  "--ssl-ca", str(certs["cert"]), "--timeout", "5"])
        assert res.exit_code == 1 and "UNAVAILABLE" in _flat(res.stderr), res.output


def test_ssl_flag_errors(tmp_path, certs):
    with pytest.raises(ClientError, match="--ssl-cert and --ssl-key go together"):
        endpoint("localhost:1", ssl_cert=certs["ccert"])
    with pytest.raises(ClientError, match="--ssl-ca .*file not found"):
        endpoint("localhost:1", ssl_ca=tmp_path / "none.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ClientError, match="not a PEM file"):
        endpoint("localhost:1", ssl_ca=junk)
    assert endpoint("grpcs://example.com").tls and not endpoint("example.com").tls
    assert endpoint("dns:///example.com:9000").balanced and not endpoint("example.com").balanced
