"""Static checks of the deployment files (Docker cannot run here, so this is the safety net).

The compose stack, the Kubernetes manifests, the Dockerfile, Prometheus and Grafana are
checked against the code they deploy: every ``COLLECTOR_*`` variable is a real setting
and the environments validate as :class:`~collector.config.Settings`; every ``collector``
command parses with the real CLI; probe paths are the app's routes and probe ports its
web port; the dashboard only queries metrics that ``collector.observability.Metrics``
exports (or named, whitelisted ones) and InfluxDB fields the sink writes.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import faust
import pytest
import yaml
from prometheus_client import CollectorRegistry

from collector.cli.main import build_parser
from collector.config import Settings, SettingsError, WebSettings, load_settings
from collector.config.docs import all_env_vars
from collector.observability import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS = COMPOSE_DIR / "prometheus.yml"
GRAFANA = COMPOSE_DIR / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"

#: Faust's web routes collector's probes and scrapers use.
LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"
#: where the image keeps RocksDB state
DATADIR = "/var/lib/collector"
#: Metric names the dashboard may use that collector does not export, with their labels.
EXTERNAL_METRICS: dict[str, set[str]] = {
    "up": {"instance", "job"},  # Prometheus' own scrape health
    "kafka_consumergroup_lag": {"consumergroup", "topic", "partition"},  # kafka-exporter
}
#: labels Prometheus attaches to every scraped series, and the histogram bucket label
TARGET_LABELS = {"instance", "job", "le"}
#: namespaced Kubernetes kinds (everything here but the Namespace itself)
CLUSTER_KINDS = {"Namespace"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("COLLECTOR_"):
            monkeypatch.delenv(key)


# ------------------------------------------------------------------ loading


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc is not None]


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text("utf-8"))
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def _env(env: Any) -> dict[str, str]:
    """A compose ``environment`` (mapping or ``KEY=VALUE`` list) as strings."""
    if env is None:
        return {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in env.items()}


def _is_collector(service: Mapping[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("collector:")


def collector_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if _is_collector(svc)}


def compose_workers() -> dict[str, dict[str, Any]]:
    """Collector services that run the image's entrypoint (the Faust worker)."""
    return {n: s for n, s in collector_services().items() if "entrypoint" not in s}


@cache
def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            doc["__file__"] = path.name
            objects.append(doc)
    return objects


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in k8s_objects()
            if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = k8s(kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        if obj.get("kind") in ("StatefulSet", "Deployment", "Job", "DaemonSet"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def configmap_env() -> dict[str, str]:
    return {k: str(v) for k, v in one("ConfigMap", "collector-config")["data"].items()}


def secret_env() -> dict[str, str]:
    secret = one("Secret", "collector-secrets")
    return {k: str(v) for k, v in secret.get("stringData", {}).items()}


def _settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        if key.startswith("COLLECTOR_"):
            monkeypatch.setenv(key, value)
    return load_settings()


def _parse_collector(argv: list[str]) -> Any:
    """Parse a ``collector …`` command line (without the program name) like the CLI does."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on errors
        raise AssertionError(f"`collector {' '.join(argv)}` does not parse") from exc


def _shell_collector_commands(script: str) -> list[list[str]]:
    """The ``collector`` invocations of a simple ``sh -c`` script (``a && exec b``)."""
    found = []
    for part in re.split(r"&&|;|\|\|", script):
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words and words[0] == "collector":
            found.append(words[1:])
    return found


def _metric_labels() -> dict[str, set[str]]:
    """Every sample name a fresh Metrics registry can export, with its label names."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    labels_by_family: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        names = getattr(value, "_labelnames", None)
        family = getattr(value, "_name", None)
        if names is not None and family is not None:
            labels_by_family[str(family)] = set(names)
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created")}
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        assert family.type in suffixes, family.type
        # prometheus_client keeps counter family names without "_total"
        base = family.name
        labels = labels_by_family.get(base) or labels_by_family.get(base.removesuffix("_total"))
        assert labels is not None, f"no label names for {base}"
        for suffix in suffixes[family.type]:
            out[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


# ------------------------------------------------------------------ YAML and env vars


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_there_are_deploy_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _yaml_files()}
    assert {"compose/docker-compose.yml", "compose/prometheus.yml", "k8s/statefulset.yaml",
            "k8s/kustomization.yaml"} <= names
    assert DASHBOARDS, "no Grafana dashboard"


def _collector_names_in_text(text: str) -> set[str]:
    # "COLLECTOR_*" / "COLLECTOR_<SECTION>__<KEY>" in prose leave a trailing underscore
    return {m for m in re.findall(r"\bCOLLECTOR_[A-Z0-9_]*", text) if not m.endswith("_")}


def _text_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in
             {".yml", ".yaml", ".json", ".md", ".ini", ".env"}
             and "local" not in p.relative_to(DEPLOY).parts[:1]]
    docs = [ROOT / "docs" / name for name in ("operations.md", "troubleshooting.md")]
    return [*files, DOCKERFILE, *(d for d in docs if d.exists())]


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_collector_variable_mentioned_exists(path: Path) -> None:
    unknown = _collector_names_in_text(path.read_text("utf-8")) - all_env_vars()
    assert not unknown, f"{path.name}: not settings: {sorted(unknown)}"


def test_compose_environments_use_real_variables() -> None:
    valid = all_env_vars()
    seen = set()
    for name, svc in services().items():
        for key in _env(svc.get("environment")):
            if key.startswith("COLLECTOR_"):
                assert key in valid, f"{name}: {key} is not a setting"
                seen.add(key)
    assert {"COLLECTOR_KAFKA__PARTITIONS", "COLLECTOR_KAFKA__REPLICATION_FACTOR",
            "COLLECTOR_APP__INSTANCE_ID"} <= seen


def test_k8s_variables_are_real_settings() -> None:
    valid = all_env_vars()
    names = set(configmap_env()) | set(secret_env())
    for _, spec in pod_specs():
        for container in containers(spec):
            names |= {e["name"] for e in container.get("env", [])}
    collector_names = {n for n in names if n.startswith("COLLECTOR_")}
    assert collector_names - valid == set()
    # everything in the ConfigMap and Secret is meant as a setting
    assert all(n.startswith("COLLECTOR_") for n in (*configmap_env(), *secret_env()))


@pytest.mark.parametrize("service", sorted(collector_services()))
def test_compose_collector_environment_validates(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(services()[service].get("environment"))
    s = _settings_from(env, monkeypatch)
    assert s.kafka.bootstrap_servers == ["kafka:9092"]
    assert s.app.store == "rocksdb"
    assert str(s.app.datadir) == DATADIR


def test_compose_collector_services_agree() -> None:
    """Workers, one-shots and the producer must share topics, partitions and the app id."""
    shared = ("COLLECTOR_APP__ID", "COLLECTOR_KAFKA__BOOTSTRAP_SERVERS",
              "COLLECTOR_KAFKA__PARTITIONS", "COLLECTOR_KAFKA__REPLICATION_FACTOR",
              "COLLECTOR_KAFKA__SOURCES", "COLLECTOR_KAFKA__RAW_TOPIC_PREFIX",
              "COLLECTOR_MYSQL__DSN", "COLLECTOR_REDIS__URL", "COLLECTOR_INFLUX__URL")
    views = {name: tuple(_env(svc.get("environment")).get(k) for k in shared)
             for name, svc in collector_services().items()}
    assert len(set(views.values())) == 1, views


# ------------------------------------------------------------------ compose


def test_compose_kafka_is_apache_kafka_in_kraft_mode_without_auto_create() -> None:
    kafka = services()["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin the Kafka version, not {tag!r}"
    env = _env(kafka["environment"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert not any("zookeeper" in name for name in services())
    # the workers' bootstrap address is an advertised listener
    advertised = {urlsplit(item).netloc for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    workers = compose_workers().values()
    for worker in workers:
        assert _env(worker["environment"])["COLLECTOR_KAFKA__BOOTSTRAP_SERVERS"] in advertised


def test_compose_creates_topics_before_the_workers_start() -> None:
    topics = services()["kafka-topics"]
    assert topics["entrypoint"] == ["collector"]
    args = _parse_collector(list(topics["command"]))
    assert (args.command, args.action) == ("topics", "create")
    env = _env(topics["environment"])
    assert int(env["COLLECTOR_KAFKA__PARTITIONS"]) >= 2
    assert int(env["COLLECTOR_KAFKA__REPLICATION_FACTOR"]) >= 1
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    migrate = services()["db-migrate"]
    args = _parse_collector(list(migrate["command"]))
    assert (args.command, args.db_command) == ("db", "migrate")
    for name, worker in compose_workers().items():
        deps = worker["depends_on"]
        for one_shot in ("kafka-topics", "db-migrate"):
            assert deps[one_shot]["condition"] == "service_completed_successfully", name


def test_compose_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = compose_workers()
    assert len(workers) >= 2
    instance_ids = set()
    for name, worker in workers.items():
        env = _env(worker["environment"])
        s = _settings_from(env, monkeypatch)
        instance_ids.add(s.app.instance_id)
        assert s.web.host == "0.0.0.0"
        assert s.web.advertised_host in (name, worker.get("hostname"))
        assert 30 <= s.kafka.session_timeout <= 60
        assert s.kafka.heartbeat_interval <= s.kafka.session_timeout / 3
        assert s.app.store == "rocksdb"
        mounts = [str(v).split(":") for v in worker.get("volumes", [])]
        assert any(m[1] == str(s.app.datadir) and m[0] in compose()["volumes"] for m in mounts)
        # the container port is the web port
        ports = [str(p).split(":")[-1] for p in worker.get("ports", [])]
        assert ports in ([], [str(s.web.port)])
        for key in list(env):
            monkeypatch.delenv(key, raising=False)
    assert len(instance_ids) == len(workers) and "" not in instance_ids


def test_compose_worker_command_is_a_valid_faust_worker_command() -> None:
    from faust.cli.faust import cli

    ctx = cli.make_context("faust", ["-A", "collector", "worker"])
    worker = cli.get_command(ctx, "worker")
    assert worker is not None
    for name, svc in compose_workers().items():
        command = list(svc.get("command") or dockerfile_json("CMD"))
        worker.make_context("worker", list(command), parent=ctx)  # raises on a bad option
        assert command[:2] == ["-l", "info"], name


def test_compose_demo_producer() -> None:
    producer = services()["producer"]
    assert producer["entrypoint"] == ["sh", "-c"]
    script = " ".join(producer["command"])
    commands = [_parse_collector(argv) for argv in _shell_collector_commands(script)]
    produce = [a for a in commands if a.command == "produce"]
    assert len(produce) == 1
    assert (produce[0].rate, produce[0].events, produce[0].malformed) == (100, 100_000_000, 0.01)


def test_compose_influx_version_matches_the_write_api() -> None:
    image = services()["influxdb"]["image"]
    version = image.partition(":")[2]
    assert re.match(r"\d+\.\d+", version), f"pin InfluxDB, not {image}"
    for name, svc in collector_services().items():
        env = _env(svc["environment"])
        api = env.get("COLLECTOR_INFLUX__API", "v1")
        if version.startswith("1."):
            assert api == "v1", name
            db = _env(services()["influxdb"]["environment"])["INFLUXDB_DB"]
            assert env.get("COLLECTOR_INFLUX__DATABASE", "collector") == db
        else:
            assert api == "v2" and env.get("COLLECTOR_INFLUX__TOKEN"), name


def test_compose_references_resolve() -> None:
    names = set(services())
    declared = set(compose().get("volumes") or {})
    for name, svc in services().items():
        deps = svc.get("depends_on") or {}
        assert set(deps) <= names, f"{name} depends on unknown services"
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
        build = svc.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
            assert context == ROOT


def test_prometheus_scrapes_every_worker() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text("utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["collector"]
    assert job.get("metrics_path", "/metrics") == METRICS
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for name, worker in compose_workers().items():
        port = _env(worker["environment"]).get("COLLECTOR_WEB__PORT", "16066")
        expected.add(f"{worker.get('hostname', name)}:{port}")
    assert targets == expected
    for job in jobs.values():
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host == "localhost" or host in services(), target


# ------------------------------------------------------------------ Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text("utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile(keyword: str) -> list[str]:
    return [rest for kw, rest in _dockerfile_instructions() if kw == keyword]


def dockerfile_json(keyword: str) -> list[str]:
    values = dockerfile(keyword)
    assert values, f"no {keyword} in the Dockerfile"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list)
    return [str(v) for v in parsed]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in dockerfile("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def test_dockerfile_entrypoint_runs_the_collector_app() -> None:
    assert dockerfile_json("ENTRYPOINT") == ["faust", "-A", "collector", "worker"]
    assert dockerfile_json("CMD") == ["-l", "info"]
    module = importlib.import_module("collector")
    assert isinstance(module.app, faust.App)
    # what `faust -A collector` resolves
    from faust.cli.base import find_app

    assert find_app("collector") is module.app


def test_dockerfile_is_multistage_slim_and_non_root() -> None:
    froms = dockerfile("FROM")
    assert len(froms) >= 2
    assert any(" AS builder" in f or " as builder" in f for f in froms)
    assert any(arg.startswith("PYTHON_IMAGE=python:3.11-slim") for arg in dockerfile("ARG"))
    assert any("--from=builder" in c for c in dockerfile("COPY"))
    user = dockerfile("USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert user.split(":")[0].isdigit(), "numeric USER lets Kubernetes check runAsNonRoot"
    env = _dockerfile_env()
    assert set(k for k in env if k.startswith("COLLECTOR_")) <= all_env_vars()
    assert env["COLLECTOR_APP__DATADIR"] == DATADIR
    assert dockerfile("WORKDIR")


def test_dockerfile_exposes_the_web_port_and_checks_livez() -> None:
    port = _dockerfile_env()["COLLECTOR_WEB__PORT"]
    assert port == str(WebSettings().port)  # the documented default, 16066
    assert dockerfile("EXPOSE") == [port]
    assert configmap_env()["COLLECTOR_WEB__PORT"] == port
    health = dockerfile("HEALTHCHECK")[-1]
    assert LIVEZ in health
    cmd = json.loads(health.split("CMD", 1)[1].strip())
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<HEALTHCHECK>", "exec")
    assert LIVEZ in app_routes()


def test_dockerignore_keeps_the_build_inputs() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*"
    for needed in ("pyproject.toml", "README.md", "collector/"):
        assert f"!{needed}" in patterns


# ------------------------------------------------------------------ Kubernetes


@cache
def app_routes() -> set[str]:
    ops = importlib.import_module("collector.web.ops")
    return {route.uri for route in ops.blueprint.routes}


def test_app_serves_the_probe_routes() -> None:
    assert {LIVEZ, READYZ, METRICS} <= app_routes()


def test_k8s_objects_have_required_fields() -> None:
    assert k8s_objects()
    for obj in k8s_objects():
        where = f"{obj['__file__']}: {obj.get('kind')}"
        assert obj.get("apiVersion"), where
        assert obj.get("kind"), where
        assert obj.get("metadata", {}).get("name"), where
        if obj["kind"] not in CLUSTER_KINDS:
            assert obj["metadata"].get("namespace") == "collector", where


def test_kustomization_lists_the_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "collector"
    resources = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources <= files
    # only the ServiceMonitor (needs the operator's CRDs) is left out
    assert files - resources == {"servicemonitor.yaml"}
    images = {i["name"] for i in kustomization.get("images", [])}
    for where, spec in pod_specs():
        for container in containers(spec):
            assert container["image"].rsplit(":", 1)[0] in images, where


def _statefulset() -> dict[str, Any]:
    return one("StatefulSet", "collector")


def _worker_container() -> dict[str, Any]:
    spec = _statefulset()["spec"]["template"]["spec"]
    (worker,) = [c for c in spec["containers"] if c["name"] == "worker"]
    return worker


def test_statefulset_structure() -> None:
    sts = _statefulset()
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    headless = one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= labels.items()
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    pod = spec["template"]["spec"]
    volumes = {v["name"] for v in pod.get("volumes", [])} | claims
    for container in containers(pod):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']}: {mount['name']}"
    data_mounts = [m for m in _worker_container()["volumeMounts"] if m["name"] in claims]
    assert [m["mountPath"] for m in data_mounts] == [configmap_env()["COLLECTOR_APP__DATADIR"]]
    assert pod["terminationGracePeriodSeconds"] >= 30


def _resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    if isinstance(port, int):
        return port
    for item in container.get("ports", []):
        if item.get("name") == port:
            return int(item["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of {container['name']}")


def test_probes_use_the_app_routes_and_the_web_port() -> None:
    web_port = int(configmap_env()["COLLECTOR_WEB__PORT"])
    worker = _worker_container()
    assert [p["containerPort"] for p in worker["ports"]] == [web_port]
    expected = {"readinessProbe": READYZ, "livenessProbe": LIVEZ, "startupProbe": LIVEZ}
    for probe, path in expected.items():
        http = worker[probe]["httpGet"]
        assert http["path"] == path and path in app_routes()
        assert _resolve_port(http["port"], worker) == web_port
    annotations = _statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == web_port
    assert annotations["prometheus.io/path"] in app_routes()


def test_services_point_at_the_web_port() -> None:
    web_port = int(configmap_env()["COLLECTOR_WEB__PORT"])
    worker = _worker_container()
    labels = _statefulset()["spec"]["template"]["metadata"]["labels"]
    for svc in k8s("Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert _resolve_port(port["targetPort"], worker) == web_port


def test_pdb_selects_the_workers() -> None:
    pdb = one("PodDisruptionBudget")
    labels = _statefulset()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_servicemonitor_scrapes_one_service_by_port_name() -> None:
    monitor = one("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [s for s in k8s("Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert len(matched) == 1, "two matched services would scrape every worker twice"
    port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] in app_routes()


def _k8s_container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The env a container sees: envFrom maps, then env (fieldRefs and $(VAR) resolved)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmap_env() if source["configMapRef"]["name"] == "collector-config"
                       else {})
            assert source["configMapRef"]["name"] == "collector-config"
        if "secretRef" in source:
            assert source["secretRef"]["name"] == "collector-secrets"
            env.update(secret_env())
    fields = {"metadata.name": "collector-0", "metadata.namespace": "collector"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)],
                                       str(item["value"]))
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_k8s_worker_environment_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker_container()
    instance = [e for e in worker["env"] if e["name"] == "COLLECTOR_APP__INSTANCE_ID"]
    assert instance[0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    env = _k8s_container_env(worker)
    # as shipped, the Secret's placeholder tokens stop the worker (it binds 0.0.0.0)
    with pytest.raises(SettingsError, match=r"web\.ingest_token") as refused:
        _settings_from(env, monkeypatch)
    assert "web.api_token" in str(refused.value) and "CHANGE-ME" not in str(refused.value)
    tokens = {"COLLECTOR_WEB__INGEST_TOKEN": "3f9a0c5e1b7d2a4c6e8f",
              "COLLECTOR_WEB__API_TOKEN": "a1b2c3d4e5f60718293a"}
    s = _settings_from({**env, **tokens}, monkeypatch)
    assert s.app.instance_id == "collector-0"
    assert s.web.advertised_host == "collector-0.collector-headless.collector.svc"
    assert s.web.host == "0.0.0.0"
    assert s.web.port == worker["ports"][0]["containerPort"]
    assert str(s.app.datadir) == DATADIR and s.app.store == "rocksdb"
    assert 30 <= s.kafka.session_timeout <= 60
    assert s.kafka.partitions >= _statefulset()["spec"]["replicas"]
    if s.kafka.ssl_cafile:
        mounts = [m["mountPath"] for m in worker["volumeMounts"]]
        assert any(s.kafka.ssl_cafile.startswith(m.rstrip("/") + "/") for m in mounts)
    # the advertised host is a name the headless service gives the pod
    assert s.web.advertised_host.split(".")[1] == _statefulset()["spec"]["serviceName"]


def test_k8s_pods_are_non_root_and_locked_down() -> None:
    for where, spec in pod_specs():
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] != 0, where
        assert spec.get("automountServiceAccountToken") is False, where
        for container in containers(spec):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, f"{where} {container['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"], f"{where} {container['name']}"
            assert container["resources"]["limits"]["memory"], f"{where} {container['name']}"


def test_k8s_collector_commands_parse() -> None:
    commands = []
    for where, spec in pod_specs():
        for container in containers(spec):
            command = container.get("command")
            if command and command[0] == "collector":
                args = _parse_collector(list(command[1:]))
                commands.append((where, args.command, getattr(args, "action", None)
                                 or getattr(args, "db_command", None)))
            elif where.startswith("StatefulSet") and container["name"] == "worker":
                assert "command" not in container, "the worker uses the image's entrypoint"
    job = [c[1:] for c in commands if c[0] == "Job/collector-setup"]
    assert job == [("topics", "create"), ("db", "migrate")]


def test_k8s_envfrom_references_exist() -> None:
    configmaps = {o["metadata"]["name"] for o in k8s("ConfigMap")}
    secrets = {o["metadata"]["name"] for o in k8s("Secret")}
    for where, spec in pod_specs():
        for container in containers(spec):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, where


# ------------------------------------------------------------------ Grafana


def _datasource_uids() -> dict[str, dict[str, Any]]:
    out = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.y*ml"):
        for doc in _load_all(path):
            for ds in doc["datasources"]:
                out[ds["uid"]] = ds
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            yield str(ds.get("uid")), {**target, "__panel__": panel.get("title", "")}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENT = re.compile(r"(?<![\w$.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                 "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses; functions and keywords excluded."""
    text = _STRING.sub('""', expr)
    labels: set[str] = set()
    for body in _MATCHERS.findall(text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body))
    text = _MATCHERS.sub(" ", text)
    for body in _GROUPING.findall(text):
        labels |= {name.strip() for name in body.split(",") if name.strip()}
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    metrics = {m for m in _IDENT.findall(text) if m not in _PROMQL_WORDS}
    return metrics, labels


def test_promql_parser_on_known_shapes() -> None:
    metrics, labels = promql_names(
        'histogram_quantile(0.95, sum by (le, sink) (rate(x_bucket{instance=~"$i"}[5m])))'
        ' / on(job) group_left y or vector(0)'
    )
    assert metrics == {"x_bucket", "y"}
    assert labels == {"le", "sink", "instance", "job"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_prometheus_queries_use_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text("utf-8"))
    exported = _metric_labels()
    known = {**exported, **EXTERNAL_METRICS}
    datasources = _datasource_uids()
    used: set[str] = set()
    count = 0
    for uid, target in _targets(dashboard):
        assert uid in datasources, f"{target['__panel__']}: unknown datasource {uid}"
        if datasources[uid]["type"] != "prometheus":
            continue
        count += 1
        metrics, labels = promql_names(target["expr"])
        assert metrics, f"{target['__panel__']}: no metric in {target['expr']!r}"
        unknown = metrics - set(known)
        assert not unknown, f"{target['__panel__']}: unknown metrics {sorted(unknown)}"
        allowed = TARGET_LABELS.union(*(known[m] for m in metrics))
        assert labels <= allowed, f"{target['__panel__']}: labels {sorted(labels - allowed)}"
        used |= metrics
    assert count >= 10
    for needed in ("collector_events_consumed_total", "collector_events_valid_total",
                   "collector_events_dead_lettered_total", "collector_enrichment_total",
                   "collector_sink_healthy", "collector_sink_write_seconds_bucket",
                   "collector_end_to_end_latency_seconds_bucket", "collector_consumer_lag"):
        assert needed in used, f"dashboard does not show {needed}"


def _influx_schema() -> dict[str, tuple[set[str], set[str]]]:
    """measurement -> (tags, fields), from the line protocol the InfluxDB sink writes."""
    from collector.sinks.influx import to_point
    from collector.sinks.rows import EVENT_STATS, SEGMENT_STATS, Row

    rows = [
        Row(EVENT_STATS, 0, 60, ("web", "click"),
            {"count": 2, "value_count": 2, "value_sum": 3.0, "value_min": 1.0,
             "value_max": 2.0}, True, 0),
        Row(SEGMENT_STATS, 0, 300, ("pro", "DE"), {"count": 2, "value_sum": 3.0}, True, 0),
    ]
    schema = {}
    for row in rows:
        line = to_point(row).to_line_protocol()
        head, fields, _ = line.split(" ")
        measurement, *tags = head.split(",")
        schema[measurement] = ({t.split("=")[0] for t in tags},
                               {f.split("=")[0] for f in fields.split(",")})
    return schema


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_influx_queries_use_written_series(path: Path) -> None:
    dashboard = json.loads(path.read_text("utf-8"))
    schema = _influx_schema()
    datasources = _datasource_uids()
    measurements = set()
    for uid, target in _targets(dashboard):
        if datasources[uid]["type"] != "influxdb":
            continue
        query = target["query"]
        (measurement,) = re.findall(r'FROM\s+"(\w+)"', query)
        assert measurement in schema, query
        tags, fields = schema[measurement]
        selected = set(re.findall(r'\w+\("(\w+)"\)', query.split("FROM")[0]))
        assert selected and selected <= fields, query
        group = query.split("GROUP BY", 1)[1] if "GROUP BY" in query else ""
        assert set(re.findall(r'"(\w+)"', group)) <= tags, query
        measurements.add(measurement)
    assert measurements == {"event_stats", "segment_stats"}


def test_grafana_provisioning_matches_compose() -> None:
    datasources = _datasource_uids()
    for ds in datasources.values():
        host = urlsplit(ds["url"]).hostname
        assert host in services(), ds["url"]
    influx = [ds for ds in datasources.values() if ds["type"] == "influxdb"]
    assert influx and influx[0]["jsonData"]["dbName"] == _env(
        services()["influxdb"]["environment"])["INFLUXDB_DB"]
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text("utf-8"))
    path = providers["providers"][0]["options"]["path"]
    mounts = [str(v).split(":") for v in services()["grafana"]["volumes"]]
    assert any(m[1] == path and (COMPOSE_DIR / m[0]).resolve() == GRAFANA / "dashboards"
               for m in mounts)
    for dash in DASHBOARDS:
        dashboard = json.loads(dash.read_text("utf-8"))
        ids = [p["id"] for p in _panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        assert dashboard["uid"]


def test_the_image_installs_the_locked_versions(tmp_path: Path) -> None:
    """The image's runtime dependencies are requirements.lock's versions (what CI ran),
    not whatever pyproject's ranges resolve to on the day of the build: the Dockerfile's
    own sed turns the lock into constraints that pin every runtime package."""
    import subprocess
    import tomllib

    run = next(r for r in dockerfile("RUN") if "requirements.lock > /tmp/constraints.txt" in r)
    assert "COPY pyproject.toml requirements.lock ./" in [
        f"COPY {rest}" for rest in dockerfile("COPY")]
    assert "pip install -c /tmp/constraints.txt -r /tmp/requirements.txt" in run
    sed = next(part.strip() for part in run.split("&&") if part.strip().startswith("sed "))
    argv = shlex.split(sed.replace("requirements.lock", str(ROOT / "requirements.lock"))
                       .replace("/tmp/constraints.txt", str(tmp_path / "c.txt")))
    assert argv[-2] == ">"
    with open(argv[-1], "w", encoding="utf-8") as out:
        subprocess.run(argv[:-2], stdout=out, check=True)
    pins = {}
    for line in (tmp_path / "c.txt").read_text("utf-8").splitlines():
        assert "--hash" not in line and not line.rstrip().endswith("\\"), line
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.split(";")[0].strip().partition("==")
            pins[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned by requirements.lock"
    assert "pytest" not in deps and "pytest" in pins  # the lock has the dev extra; pip -c
    # installs only what -r asks for, so it stays out of the image
