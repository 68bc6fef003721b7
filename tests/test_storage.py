"""Model base paths on object storage, against a real S3-compatible server (moto) on 127.0.0.1.

moto runs with authentication on: an IAM user with full access is created first, then every request must be signed
with its keys, so wrong keys fail as they would on AWS.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfsctl.core import remote_loader, storage  # noqa: E402
from tfsctl.errors import ConfigError, StorageError  # noqa: E402
from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.serving.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.testing import wait_until, write_toy_model  # noqa: E402

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")

BUCKET = "models"
X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


# --- pure rules ------------------------------------------------------------------------------------------------------


def test_urls_survive_pathlib_and_file_urls_are_local():
    assert storage.normalize(Path("s3://bucket/m/1")) == "s3://bucket/m/1"  # Path collapses '//'
    assert storage.normalize("gs://b/m/") == "gs://b/m"
    assert storage.normalize("file:///tmp/m") == "/tmp/m"
    assert storage.normalize(Path("file:///tmp/m")) == "/tmp/m"
    assert storage.normalize("/tmp/m") == "/tmp/m"
    assert storage.is_remote("s3://b/m") and storage.is_remote(Path("gs://b/m"))
    assert not storage.is_remote("file:///tmp/m") and not storage.is_remote("/tmp/m")


def test_unknown_scheme_and_missing_extra_are_clear_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown scheme 'hdfs://' \(supported: file, gcs, gs, s3, s3a\)"):
        storage.check_path("hdfs://namenode/models/m")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if tfsctl[cloud] were not installed
    with pytest.raises(ConfigError, match=r"needs the s3fs package: pip install 'tfsctl\[cloud\]'"):
        storage.check_path("s3://b/m")
    storage.check_path("file:///tmp/m")
    storage.check_path("/tmp/m")


def test_server_refuses_an_unknown_scheme_at_start():
    server = ModelServer(ServerOptions(port=0, rest_api_port=0, host="127.0.0.1", model_base_path="ftp://h/m"))
    with pytest.raises(ConfigError, match="unknown scheme 'ftp://'"):
        server.start()


def test_s3_settings_from_the_environment(monkeypatch):
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT", "S3_USE_HTTPS", "S3_VERIFY_SSL",
              "AWS_REGION", "AWS_DEFAULT_REGION", "S3_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("S3_ENDPOINT", "minio.local:9000")  # TF Serving's S3 variables
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    monkeypatch.setenv("S3_VERIFY_SSL", "0")
    monkeypatch.setenv("S3_REGION", "eu-west-1")
    client = storage._s3_options()["client_kwargs"]
    assert client == {"endpoint_url": "http://minio.local:9000", "region_name": "eu-west-1", "verify": False}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")  # the AWS variables win
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    client = storage._s3_options()["client_kwargs"]
    assert client["endpoint_url"] == "https://s3.example.com" and client["region_name"] == "us-west-2"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert storage._s3_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:1"


def test_config_files_and_reloads_refuse_an_unknown_scheme(tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    from tfsctl.core.config import load_model_server_config
    from tfsctl.core.server_core import ServerCore, ServerCoreOptions
    from tfsctl.errors import InvalidArgument

    path = tmp_path / "models.config"
    path.write_text('model_config_list {\n  config {\n    name: "m"\n    base_path: "hdfs://nn/m"\n'
                    '    model_platform: "tensorflow"\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"models.config.*model 'm': base path hdfs://nn/m: unknown scheme"):
        load_model_server_config(path)
    config = model_server_config_pb2.ModelServerConfig()
    mc = config.model_config_list.config.add(name="m", base_path="ftp://host/m", model_platform="tensorflow")
    manager = ServerCore(ServerCoreOptions(freeze_gc=False))
    try:
        with pytest.raises(InvalidArgument, match="unknown scheme 'ftp://'"):  # HandleReloadConfigRequest's answer
            manager.apply_config(config)
        mc.base_path = "s3://bucket/m"  # a known scheme is accepted (nothing is listed before start)
        manager.apply_config(config)
        assert manager.model_names() == ["m"]
    finally:
        manager.stop(timeout=1)


@pytest.mark.parametrize(("names", "why"), [
    ({"variables/variables.index", "variables/variables.data-00000-of-00001"}, "no saved_model.pb"),
    ({"saved_model.pb", "variables/variables.data-00000-of-00001"}, "no variables/variables.index"),
    ({"saved_model.pb", "variables/variables.index"}, "no variables/variables.data-"),
    ({"saved_model.pb", "variables/variables.index", "variables/variables.data-00001-of-00002"}, "1 of 2"),
    ({"saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00002",
      "variables/variables.data-00001-of-00002"}, ""),
    ({"saved_model.pb"}, ""),  # a graph without variables
    ({"saved_model.pbtxt", "assets/vocab.txt"}, ""),
])
def test_completeness_rules_1_and_2(names, why):
    got = storage.missing_parts(names)
    assert (why in got) if why else got == ""


# --- moto ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with auth on; yields (endpoint, good keys) and sets the AWS environment."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
             "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="tfsctl")
    iam.put_user_policy(UserName="tfsctl", PolicyName="all",
                        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*",'
                                       '"Resource":"*"}]}')
    key = iam.create_access_key(UserName="tfsctl")["AccessKey"]
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"}))
    keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "us-east-1", **keys}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL", "S3_ENDPOINT", "AWS_PROFILE"]}
    os.environ.update(env)
    for k in ("AWS_ENDPOINT_URL", "S3_ENDPOINT", "AWS_PROFILE"):
        os.environ.pop(k, None)
    storage.reset_filesystems()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.reset_filesystems()
    server.stop()


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> dict[float, Path]:
    """Local toy versions to upload (scale -> directory)."""
    base = tmp_path_factory.mktemp("toys")
    return {scale: write_toy_model(base, int(scale), scale=scale) for scale in (1.0, 2.0, 3.0)}


@pytest.fixture(autouse=True)
def _fast_settle(monkeypatch):
    monkeypatch.setattr(storage, "SETTLE_SECONDS", 0.2)


def _files(local: Path) -> list[str]:
    return sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())


def _upload(client, local: Path, prefix: str, only: list[str] | None = None) -> None:
    """As `aws s3 cp --recursive`: object by object; saved_model.pb first, the worst order for a reader."""
    names = _files(local) if only is None else only
    for rel in sorted(names, key=lambda n: (n != "saved_model.pb", n)):
        client.upload_file(str(local / rel), BUCKET, f"{prefix}/{rel}")


def _delete(client, prefix: str) -> None:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    for obj in listed:
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])



def test_list_versions_waits_for_a_complete_and_stable_upload(s3, toys):
    _, client = s3
    base = f"s3://{BUCKET}/listing"
    assert storage.list_versions(base) == {}  # nothing there yet: no error
    _upload(client, toys[1.0], "listing/1", only=["saved_model.pb", "variables/variables.index"])
    client.put_object(Bucket=BUCKET, Key="listing/not-a-version/saved_model.pb", Body=b"x")
    assert storage.list_versions(base) == {}  # rule 2: no variables data shard yet
    _upload(client, toys[1.0], "listing/1")
    # Rule 3 without the settle window: the first listing that sees it complete does not trust it yet...
    assert storage.list_versions(base, settle_seconds=0) == {}
    # ...the next one, identical, does.
    assert storage.list_versions(base, settle_seconds=0) == {1: f"{base}/1"}
    # A version not seen before is confirmed by a second listing after the settle window within one call.
    _upload(client, toys[2.0], "listing/2")
    assert storage.list_versions(base) == {1: f"{base}/1", 2: f"{base}/2"}
    assert storage.list_versions(Path(base)) == {1: f"{base}/1", 2: f"{base}/2"}  # as the Source passes it


def test_tf_serving_s3_endpoint_variables_reach_the_server(s3, toys, monkeypatch):
    endpoint, client = s3
    _upload(client, toys[1.0], "tfvars/1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("S3_ENDPOINT", endpoint.removeprefix("http://"))  # host:port, as TF Serving takes it
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    storage.reset_filesystems()
    try:
        assert storage.list_versions("s3://models/tfvars") == {1: "s3://models/tfvars/1"}
    finally:
        monkeypatch.undo()
        storage.reset_filesystems()


def test_download_is_atomic_and_complete(s3, toys, tmp_path):
    _, client = s3
    client.put_object(Bucket=BUCKET, Key="dl/5/", Body=b"")  # folder markers, as consoles create them
    client.put_object(Bucket=BUCKET, Key="dl/5/variables/", Body=b"")
    _upload(client, toys[1.0], "dl/5")
    dest = tmp_path / "cache" / "m" / "5"
    storage.download("s3://models/dl/5", dest)
    assert _files(dest) == _files(toys[1.0])
    assert [p.name for p in dest.parent.iterdir()] == ["5"]  # no temporary directory left behind
    with pytest.raises(StorageError, match="not complete"):
        storage.download("s3://models/dl/404", tmp_path / "cache" / "m" / "404")
    assert [p.name for p in dest.parent.iterdir()] == ["5"]


# --- serving from S3 -------------------------------------------------------------------------------------------------


def _predict(port: int, name: str = "m") -> tuple[int, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        req.inputs["x"].CopyFrom(from_numpy(X))
        resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=10)
    return resp.model_spec.version.value, float(to_numpy(resp.outputs["y"], "y")[0, 0])


def _status(port: int, name: str = "m") -> dict[int, get_model_status_pb2.ModelVersionStatus]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        resp = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=10)
    return {s.version: s for s in resp.model_version_status}


def _states(port: int, name: str = "m") -> dict[int, int]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        try:
            resp = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=10)
        except grpc.RpcError:
            return {}
    return {s.version: s.state for s in resp.model_version_status}


def test_serving_from_s3_follows_uploads_and_deletes(s3, toys, tmp_path, caplog):
    _, client = s3
    caplog.set_level(logging.INFO, logger="tfsctl.core.storage")
    caplog.set_level(logging.INFO, logger="tfsctl.core.source")
    _upload(client, toys[1.0], "serve/m/1")
    cache = tmp_path / "cache"
    with served(ready_timeout=30, grace=1, model_name="m", model_base_path=f"s3://{BUCKET}/serve/m",
                file_system_poll_wait_seconds=0.2, max_num_load_retries=1, load_retry_interval_seconds=0.2,
                model_cache_dir=str(cache),
                retry_failed_versions_on_change=True) as server:  # the fix-in-place step below
        port = server.grpc_port
        assert _predict(port) == (1, 1.0)
        assert [p.name.split(".")[0] for p in (cache / "m").iterdir()] == ["1"]  # the local copy

        # A version uploaded while serving appears and serves; the old one unloads and its copy goes.
        _upload(client, toys[2.0], "serve/m/2")
        wait_until(lambda: _predict(port) == (2, 2.0), 20, "version 2 to serve")
        wait_until(lambda: 1 not in _states(port) or _states(port)[1] != AVAILABLE, 20, "version 1 to unload")
        wait_until(lambda: [p.name.split(".")[0] for p in (cache / "m").iterdir()] == ["2"], 20, "v1 copy deleted")

        # A half-uploaded version is not loaded while the upload is incomplete...
        _upload(client, toys[3.0], "serve/m/3", only=["saved_model.pb", "variables/variables.index"])
        wait_until(lambda: "serve/m/3 is not complete (no variables/variables.data-* shard yet)" in caplog.text,
                   20, "the incomplete version to be noticed")
        assert 3 not in _states(port) and _predict(port) == (2, 2.0)
        # ...and is once it completes.
        _upload(client, toys[3.0], "serve/m/3")
        wait_until(lambda: _predict(port) == (3, 3.0), 20, "version 3 to serve")

        # A deleted version unloads; availability is preserved (2 loads again before 3 goes).
        _delete(client, "serve/m/3")
        wait_until(lambda: _states(port).get(3) not in (AVAILABLE, None) and _predict(port) == (2, 2.0),
                   20, "version 3 to unload and 2 to serve")
        wait_until(lambda: [p.name.split(".")[0] for p in (cache / "m").iterdir()] == ["2"], 20, "v3 copy deleted")

        # A complete but corrupt version: its load error is in GetModelStatus, its copy is gone, 2 keeps serving.
        variables = [n for n in _files(toys[3.0]) if n != "saved_model.pb"]
        _upload(client, toys[3.0], "serve/m/4", only=variables)
        client.put_object(Bucket=BUCKET, Key="serve/m/4/saved_model.pb", Body=b"not a SavedModel")
        wait_until(lambda: 4 in _status(port) and _status(port)[4].state == END, 20, "version 4's load to fail")
        status = _status(port)[4]
        assert "s3://models/serve/m/4" in status.status.error_message
        assert "cannot parse the SavedModel proto" in status.status.error_message
        assert _predict(port) == (2, 2.0)
        assert [p.name.split(".")[0] for p in (cache / "m").iterdir()] == ["2"]
        # Fixing it in place (the version never leaves the listing) makes the server try again with
        # --retry_failed_versions_on_change, as a changed local directory does.
        _upload(client, toys[3.0], "serve/m/4", only=["saved_model.pb"])
        wait_until(lambda: _predict(port) == (4, 3.0), 20, "the re-uploaded version 4 to serve")

        # Credentials that stop working: a clear error in the log, and the loaded version keeps serving.
        os.environ["AWS_SECRET_ACCESS_KEY"], good = "revoked", os.environ["AWS_SECRET_ACCESS_KEY"]
        storage.reset_filesystems()
        try:
            wait_until(lambda: "serve/m: access denied" in caplog.text, 20, "the credentials error")
            assert _predict(port) == (4, 3.0) and _states(port)[4] == AVAILABLE
        finally:
            os.environ["AWS_SECRET_ACCESS_KEY"] = good
            storage.reset_filesystems()
    assert list((cache / "m").iterdir()) == []  # every copy dropped after the final unload


def test_bad_credentials_are_a_clear_error_and_the_server_keeps_serving(s3, toys, tmp_path, monkeypatch, caplog):
    _, client = s3
    _upload(client, toys[1.0], "creds/remote/1")
    write_toy_model(tmp_path / "local", 1, scale=1.0)
    config = tmp_path / "models.config"
    local, remote = tmp_path / "local", f"s3://{BUCKET}/creds/remote"
    config.write_text(
        f'model_config_list {{ config {{ name: "local" base_path: "{local}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "remote" base_path: "{remote}" model_platform: "tensorflow" }} }}\n')
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage.reset_filesystems()
    caplog.set_level(logging.INFO, logger="tfsctl.core.storage")
    try:
        with served(ready_timeout=None, grace=1, model_config_file=str(config),
                    file_system_poll_wait_seconds=0.2) as server:
            wait_until(lambda: "access denied" in caplog.text, 20, "the credentials error in the log")
            line = next(r.getMessage() for r in caplog.records if "access denied" in r.getMessage())
            assert "model remote: cannot list s3://models/creds/remote: access denied" in line
            assert "AWS_ACCESS_KEY_ID" in line and "AWS_ENDPOINT_URL_S3" in line
            assert sum("access denied" in r.getMessage() for r in caplog.records) == 1  # once, not every poll
            port = server.grpc_port
            wait_until(lambda: _states(port, "local").get(1) == AVAILABLE, 20, "the local model")
            assert _predict(port, "local") == (1, 1.0)  # the server keeps serving
            assert _states(port, "remote") == {}
    finally:
        storage.reset_filesystems()


def test_serving_a_file_url_loads_in_place(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=1.0)
    with served(ready_timeout=30, grace=1, model_name="m", model_base_path=(tmp_path / "toy").as_uri(),
                file_system_poll_wait_seconds=0.2, model_cache_dir=str(tmp_path / "cache")) as server:
        assert _predict(server.grpc_port) == (1, 1.0)
        with server.manager.handle("m") as servable:
            assert Path(servable.path) == tmp_path / "toy" / "1"  # no copy for file://


def test_remote_aware_factory_keeps_local_paths_local(tmp_path):
    made = []
    factory = remote_loader.remote_aware_factory(lambda n, v, p: made.append((n, v, p)) or "local-loader",
                                                 cache=tmp_path)
    assert factory("m", 1, Path("file:///srv/m/1")) == "local-loader"
    assert made == [("m", 1, Path("/srv/m/1"))]
    loader = factory("m", 2, Path("s3://b/m/2"))
    assert isinstance(loader, remote_loader.CachingLoader) and loader.url == "s3://b/m/2"


def test_cache_dir_is_claimed_and_only_stale_copies_are_removed(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    for stale in ("m/3.deadbeef", "m/.partial-3.deadbeef-x1y2", "other%2Fname/12.0123abcd"):
        (root / stale / "variables").mkdir(parents=True)
    (root / "m" / "notes").mkdir()
    (root / "m" / "README").write_text("not ours")
    monkeypatch.setattr(remote_loader, "_roots", {})
    monkeypatch.setattr(remote_loader, "_held", [])
    assert remote_loader.cache_dir(root) == root
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        ".tfsctl-cache.lock", "m", "m/README", "m/notes", "other%2Fname"]
    # A second claim of the same directory (another server process) must not delete the first one's copies.
    (root / "m" / "4.00aa11bb").mkdir()
    private = remote_loader._claim(root)
    assert private.parent == root and private.name.startswith("process-")
    assert (root / "m" / "4.00aa11bb").is_dir()
    for fd in remote_loader._held:
        os.close(fd)


# --- gs:// against a GCS emulator -------------------------------------------------------------------------------------


@pytest.fixture
def gcs(monkeypatch):
    """gcp-storage-emulator (JSON API, in memory) on 127.0.0.1 with bucket `models`; yields an fsspec filesystem."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    pytest.importorskip("gcsfs")
    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    host, port = server._api._httpd.server_address[:2]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{host}:{port}")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    storage.reset_filesystems()
    try:
        yield storage.filesystem("gs")
    finally:
        storage.reset_filesystems()
        server.stop()


def test_serving_from_gcs(gcs, toys, tmp_path):
    def upload(local: Path, prefix: str) -> None:
        for rel in sorted(_files(local), key=lambda n: (n != "saved_model.pb", n)):
            gcs.put_file(str(local / rel), f"{BUCKET}/{prefix}/{rel}")

    upload(toys[1.0], "gcs/m/1")
    with served(ready_timeout=30, grace=1, model_name="m", model_base_path=f"gs://{BUCKET}/gcs/m",
                file_system_poll_wait_seconds=0.2, model_cache_dir=str(tmp_path / "cache")) as server:
        assert _predict(server.grpc_port) == (1, 1.0)
        upload(toys[2.0], "gcs/m/2")
        wait_until(lambda: _predict(server.grpc_port) == (2, 2.0), 20, "version 2 from gs:// to serve")


def test_an_unusable_cache_dir_is_a_load_error_of_the_version(tmp_path, monkeypatch):
    from tfsctl.core.loader import LoadError

    monkeypatch.setattr(remote_loader, "_roots", {})
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache directory should be")
    factory = remote_loader.remote_aware_factory(cache=not_a_dir)
    loader = factory("m", 1, Path("s3://b/m/1"))  # building the loader never fails: the Manager reports load()
    with pytest.raises(LoadError, match=r"model 'm' version 1 \(s3://b/m/1\): .*File exists"):
        loader.load()
