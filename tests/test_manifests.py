"""Deployment recipes: the Dockerfile's structure, its entrypoint (run for real), and every Kubernetes / KServe
manifest validated offline against the Kubernetes schemas (kubernetes-validate) and KServe's CRD structure."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
K8S_VERSION = "1.30"  # oldest release the manifests target (gRPC probes are GA since 1.27)
# KServe's own kserve-tensorflow-serving runtime starts tensorflow_model_server with exactly these.
KSERVE_TF_ARGS = ["--model_name={{.Name}}", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models",
                  "--rest_api_timeout_in_ms=60000"]
MONITORING_FLAG = "--monitoring_config_file"


# --- Dockerfile -------------------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def test_dockerfile_structure():
    ins = _instructions(REPO / "Dockerfile")
    kinds = [k for k, _ in ins]
    assert kinds[0] == "FROM" and kinds.count("FROM") == 1
    assert ins[0][1].startswith("python:3.11-slim")
    # tfsctl installed from the repository (with the cloud extra by default), sources copied in first.
    copied = [args.split()[:-1] for k, args in ins if k == "COPY"]
    for sources in copied:
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} is not in the repository"
    assert any("pip install" in a and "/src" in a for k, a in ins if k == "RUN")
    assert ("ARG", "EXTRAS=cloud") in ins
    # A non-root user, set after the last RUN (nothing runs as root at serving time).
    users = [(i, a) for i, (k, a) in enumerate(ins) if k == "USER"]
    assert users, "no USER instruction"
    last_user_index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert all(i < last_user_index for i, (k, _) in enumerate(ins) if k == "RUN")
    # TF Serving's image contract: ports, environment, exec-form entrypoint.
    exposed = {p for k, a in ins if k == "EXPOSE" for p in a.split()}
    assert {"8500", "8501"} <= exposed
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "MODEL_NAME=model" in env and "MODEL_BASE_PATH=/models" in env
    entry = [a for k, a in ins if k == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: a JSON array, so no /bin/sh -c swallows SIGTERM
    assert isinstance(argv, list) and len(argv) == 1
    assert any(k == "COPY" and a.split() == ["docker/entrypoint.sh", argv[0]] for k, a in ins)
    assert ("STOPSIGNAL", "SIGTERM") in ins


# --- entrypoint -------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_tfsctl(tmp_path) -> Path:
    """A `tfsctl` on PATH that prints its argv and pid as JSON."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "tfsctl"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'pid': os.getpid()}))\n")
    fake.chmod(0o755)
    return bindir


def _run_entrypoint(bindir: Path, *args: str, **env: str) -> tuple[dict, int]:
    full = {"PATH": f"{bindir}:{os.environ['PATH']}", **env}
    proc = subprocess.Popen(["/bin/sh", str(ENTRYPOINT), *args], env=full, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    return json.loads(out), proc.pid


def test_entrypoint_defaults_match_tf_serving_image(fake_tfsctl):
    got, pid = _run_entrypoint(fake_tfsctl)
    assert got["argv"] == ["serve", "--port=8500", "--rest_api_port=8501", "--model_name=model",
                           "--model_base_path=/models/model"]
    assert got["pid"] == pid  # exec: tfsctl replaces the shell, so the container's SIGTERM reaches it


def test_entrypoint_environment_and_pass_through(fake_tfsctl):
    got, _ = _run_entrypoint(fake_tfsctl, "--enable-batching", "--rest_api_port=0",
                             MODEL_NAME="deeplab", MODEL_BASE_PATH="s3://bucket/models")
    assert got["argv"] == ["serve", "--port=8500", "--rest_api_port=8501", "--model_name=deeplab",
                           "--model_base_path=s3://bucket/models/deeplab", "--enable-batching", "--rest_api_port=0"]


@pytest.mark.parametrize("flag", [["--model_config_file=/models/models.config"],
                                  ["--model-config-file", "/models/models.config"]])
def test_entrypoint_with_a_model_config_file_leaves_out_the_single_model_flags(fake_tfsctl, flag):
    got, _ = _run_entrypoint(fake_tfsctl, *flag, MODEL_NAME="ignored")
    assert got["argv"] == ["serve", "--port=8500", "--rest_api_port=8501", *flag]


def _free_port() -> int:
    from tfsctl.testing import free_port

    return free_port()


def test_entrypoint_runs_real_tfsctl_and_stops_on_sigterm(tmp_path):
    """The script with the real CLI: flags accepted (a repeated flag's last value wins), model served, exit 0."""
    from tfsctl.testing import wait_until, write_toy_model

    write_toy_model(tmp_path / "models" / "toy", 1)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "tfsctl").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tfsctl \"$@\"\n")
    (bindir / "tfsctl").chmod(0o755)
    grpc_port, rest_port = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "MODEL_NAME": "toy",
           "MODEL_BASE_PATH": str(tmp_path / "models"), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
         f"{MONITORING_FLAG}={REPO / 'docker' / 'monitoring.config'}"],  # the file the image ships
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def available() -> bool:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/toy", timeout=2) as r:
                    return json.load(r)["model_version_status"][0]["state"] == "AVAILABLE"
            except (urllib.error.URLError, OSError, KeyError, IndexError):
                return False

        wait_until(available, 60, "the entrypoint's server to serve model toy", every=0.2)
        with socket.create_connection(("127.0.0.1", grpc_port), timeout=2):
            pass  # gRPC listens on the port given last, not the entrypoint's 8500
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{_shipped_metrics_path()}", timeout=10) as r:
            assert ":tensorflow:serving:request_count" in r.read().decode()  # the shipped config enables the page
        proc.send_signal(signal.SIGTERM)  # to the entrypoint's pid, which is tfsctl's after exec
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the metrics page: scrape annotations need a monitoring config ----------------------------------------------------


def _image_files() -> dict[str, Path]:
    """{path in the image: file in the repository} for every single-file COPY in the Dockerfile."""
    out = {}
    for kind, args in _instructions(REPO / "Dockerfile"):
        parts = [p for p in args.split() if not p.startswith("--")]
        if kind == "COPY" and len(parts) == 2 and (REPO / parts[0]).is_file():
            out[parts[1]] = REPO / parts[0]
    return out


def _shipped_metrics_path() -> str:
    """The Prometheus path docker/monitoring.config (the image's monitoring config) enables."""
    from tfsctl.core.config import load_monitoring_config

    prom = load_monitoring_config(REPO / "docker" / "monitoring.config").prometheus_config
    assert prom.enable
    return prom.path


def _scraped_servers() -> list[tuple[str, dict, list[str], int]]:
    """(manifest, {port, path} the scrape annotations promise, container args, REST port) for each scraped server."""
    out = []
    deployment = next(d for d in _docs("k8s") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    notes = pod["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") == "true":
        promise = {"port": notes.get("prometheus.io/port"), "path": notes.get("prometheus.io/path")}
        out.append(("k8s Deployment", promise, pod["spec"]["containers"][0]["args"], 8501))  # the entrypoint's port
    runtime = _docs("kserve")[0]["spec"]
    notes = runtime.get("annotations", {})
    if any(k.startswith("prometheus.kserve.io/") for k in notes):
        args = runtime["containers"][0]["args"]
        rest = [int(a.split("=", 1)[1]) for a in args if a.startswith("--rest_api_port=")]
        out.append(("KServe runtime", {"port": notes.get("prometheus.kserve.io/port"),
                                       "path": notes.get("prometheus.kserve.io/path")}, args, rest[-1]))
    return out


def test_scrape_annotations_name_a_page_the_server_serves():
    """TF Serving and tfsctl serve the Prometheus page only under --monitoring_config_file: a manifest promising
    scraping passes that flag, naming a file the image ships, which enables the annotated path on the REST port."""
    from tfsctl.core.config import load_monitoring_config

    scraped = _scraped_servers()
    assert {name for name, *_ in scraped} == {"k8s Deployment", "KServe runtime"}
    shipped = _image_files()
    for name, promise, args, rest_port in scraped:
        assert promise["port"] == str(rest_port), f"{name}: scrape port {promise['port']} is not REST's {rest_port}"
        configs = [a.split("=", 1)[1] for a in args if a.startswith(MONITORING_FLAG + "=")]
        assert configs, f"{name} annotates scraping but passes no {MONITORING_FLAG}: the page would not exist"
        assert configs[-1] in shipped, f"{name}: {configs[-1]} is not a file the Dockerfile copies into the image"
        prom = load_monitoring_config(shipped[configs[-1]]).prometheus_config
        assert prom.enable, f"{name}: {configs[-1]} does not enable prometheus_config"
        assert promise["path"] == prom.path, f"{name}: scrapes {promise['path']}, the page is at {prom.path}"


# --- Kubernetes -------------------------------------------------------------------------------------------------------


def _docs(directory: str) -> list[dict]:
    docs = []
    for path in sorted((REPO / "deploy" / directory).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails: validation must work offline."""
    def refuse(*_a, **_k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_k8s_manifest_validates_against_the_kubernetes_schema(no_network):
    docs = _docs("k8s")
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError with the path


def test_the_validator_rejects_a_broken_manifest(no_network):
    deployment = next(d for d in _docs("k8s") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"  # int only
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = next(d for d in _docs("k8s") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo: strict refuses it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_deployment_probes_ports_metrics_and_shutdown():
    docs = {d["kind"]: d for d in _docs("k8s") if d["kind"] != "Service"}
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert container["readinessProbe"]["grpc"] == {"port": 8500}  # grpc.health.v1, service "" = every model
    assert container["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8501"
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert grace >= pre_stop + 10 + 5  # preStop pause + tfsctl's 10 s drain + margin
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TFSCTL_MODEL_CACHE_DIR"] in {m["mountPath"] for m in container["volumeMounts"]}
    # Every selector picks exactly these pods; the HPA scales this Deployment.
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in _docs("k8s") if d["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for p in service["spec"]["ports"]:
            assert p["targetPort"] in ports
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_every_flag_in_the_manifests_is_a_tfsctl_serve_flag():
    """The args given to the container must be options `tfsctl serve` knows (snake_case as TF Serving)."""
    from tfsctl.serving.flags import BY_NAME  # serve parses its own flags (tensorflow_model_server's syntax)

    known = {"--" + name for name in BY_NAME}
    deployment = next(d for d in _docs("k8s") if d["kind"] == "Deployment")
    runtime = _docs("kserve")[0]
    flags = [a.split("=")[0] for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]
    flags += [a.split("=")[0] for a in runtime["spec"]["containers"][0]["args"]]
    entry = ENTRYPOINT.read_text()
    flags += ["--port", "--rest_api_port", "--model_name", "--model_base_path", "--model_config_file"]
    assert all(f in entry for f in flags[-5:])
    from tfsctl.serving.server import ServerOptions

    pending = {"--rest_api_timeout_in_ms"} - {"--" + f.name for f in dataclasses.fields(ServerOptions)}
    missing = [f for f in flags if f not in known and f not in pending]
    assert not missing, f"tfsctl serve does not accept {missing}"


# --- KServe -----------------------------------------------------------------------------------------------------------

# The ClusterServingRuntime spec as KServe's CRD (config/crd/full/serving.kserve.io_clusterservingruntimes.yaml,
# v1alpha1) declares it: its property names (unknown ones are pruned by the API server, so a typo is an error
# here), the required `containers`, and the supportedModelFormats item schema; containers are Kubernetes
# core/v1 Containers, checked with Kubernetes' own schema.
_KSERVE_SPEC_SCHEMA = {
    "type": "object",
    "required": ["containers"],
    "additionalProperties": False,
    "properties": {
        "affinity": {"type": "object"}, "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "builtInAdapter": {"type": "object"},
        "containers": {"type": "array", "minItems": 1,
                       "items": {"$ref": "https://kubernetes.io/api/_definitions.json#/$defs/"
                                         "io.k8s.api.core.v1.Container"}},
        "disabled": {"type": "boolean"}, "grpcDataEndpoint": {"type": "string"}, "grpcEndpoint": {"type": "string"},
        "hostIPC": {"type": "boolean"}, "httpDataEndpoint": {"type": "string"}, "imagePullSecrets": {"type": "array"},
        "labels": {"type": "object"}, "multiModel": {"type": "boolean"}, "nodeSelector": {"type": "object"},
        "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
        "replicas": {"type": "integer"}, "resourceClaims": {"type": "array"}, "schedulerName": {"type": "string"},
        "storageHelper": {"type": "object"},
        "supportedModelFormats": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"autoSelect": {"type": "boolean"}, "name": {"type": "string"},
                           "priority": {"type": "integer", "minimum": 1}, "version": {"type": "string"}}}},
        "tolerations": {"type": "array"}, "volumes": {"type": "array"}, "workerSpec": {"type": "object"},
    },
}
_KSERVE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"const": "ClusterServingRuntime"},
        "metadata": {"type": "object", "required": ["name"], "not": {"required": ["namespace"]}},  # cluster-scoped
        "spec": _KSERVE_SPEC_SCHEMA,
    },
}


def _kserve_validator():
    import jsonschema
    from referencing import Registry, Resource

    directory = f"v{K8S_VERSION}.0-local-strict"
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/{directory}/_definitions.json", K8S_VERSION)
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(_KSERVE_SCHEMA, registry=registry)


def test_kserve_runtime_validates_against_the_crd_structure(no_network):
    docs = _docs("kserve")
    assert len(docs) == 1
    validator = _kserve_validator()
    errors = [e.message for e in validator.iter_errors(docs[0])]
    assert errors == []
    broken = json.loads(json.dumps(docs[0]))
    broken["spec"]["supportedModelFormat"] = broken["spec"].pop("supportedModelFormats")  # a typo
    broken["spec"]["containers"][0]["ports"] = [{"containerPort": "8080"}]  # a string: Container says integer
    assert len(list(validator.iter_errors(broken))) >= 2


def test_kserve_runtime_drops_in_for_kserve_tensorflow_serving():
    runtime = _docs("kserve")[0]
    spec = runtime["spec"]
    assert {(f["name"], f.get("version")) for f in spec["supportedModelFormats"]} == {("tensorflow", "1"),
                                                                                   ("tensorflow", "2")}
    assert all(f.get("autoSelect") for f in spec["supportedModelFormats"])
    assert set(spec["protocolVersions"]) == {"v1", "v2", "grpc-v1", "grpc-v2"}  # v2: docs/V2.md
    container = spec["containers"][0]
    assert container["name"] == "kserve-container"
    assert container["command"] == ["tfsctl", "serve"]
    assert container["args"][:len(KSERVE_TF_ARGS)] == KSERVE_TF_ARGS
    assert [a.split("=")[0] for a in container["args"][len(KSERVE_TF_ARGS):]] == [MONITORING_FLAG]  # the page
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert container["securityContext"]["runAsNonRoot"] is True
