"""docker/: no Docker engine runs here, so check what can be checked without one: the compose
file's structure, that the lb config it mounts passes `lb check` and fits the rest of the demo,
and the Dockerfile's essentials."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from lb.config import load
from lb.discovery.register import registration_spec
from lb.discovery.tagroutes import plan_tag_routes

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # Join continuation lines so that each instruction reads as one line.
    return re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(host)] = int(container)
    return out


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to docker/)."""
    out = {}
    for spec in service.get("volumes", []):
        host, container, *_ = str(spec).split(":")
        out[container] = host
    return out


def hcl_string(text: str, key: str) -> str:
    found = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.M)
    assert found, f'no {key} = "..."'
    return found.group(1)


def consul_definitions() -> dict[str, dict[str, Any]]:
    """Service ID -> name, tags and whether it has an HTTP check, read from docker/consul.d."""
    out = {}
    for path in sorted((DOCKER / "consul.d").glob("*.hcl")):
        text = path.read_text()
        tags = re.search(r"^\s*tags\s*=\s*\[([^\]]*)\]", text, re.M)
        out[hcl_string(text, "id")] = {
            "name": hcl_string(text, "name"),
            "tags": re.findall(r'"([^"]*)"', tags.group(1)) if tags else [],
            "http_check": re.search(r"check\s*\{[^}]*\bhttp\s*=", text) is not None,
        }
    return out


def test_compose_services_and_ports(compose):
    services = compose["services"]
    assert {"consul", "lb", "demo-1", "demo-2", "prometheus"} <= set(services)
    assert published(services["consul"]) == {8500: 8500}
    assert published(services["lb"]) == {8080: 8080, 9901: 9901}
    assert published(services["prometheus"]) == {9090: 9090}
    for demo in ("demo-1", "demo-2"):
        assert "image" in services[demo] and not published(services[demo])


def test_compose_consul_is_a_dev_agent_with_the_demo_definitions(compose):
    consul = compose["services"]["consul"]
    assert consul["image"].startswith("hashicorp/consul:")
    assert "-dev" in consul["command"]
    assert mounts(consul)["/consul/config"] == "./consul.d"
    assert "healthcheck" in consul


def test_compose_lb_builds_the_image_and_mounts_its_config(compose):
    lb = compose["services"]["lb"]
    assert lb["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert mounts(lb)["/etc/lb/lb.yaml"] == "./lb.yaml"
    assert lb["depends_on"]["consul"]["condition"] == "service_healthy"
    grace = re.fullmatch(r"(\d+)s", lb["stop_grace_period"])
    drain = load(str(DOCKER / "lb.yaml")).config.listeners[0].timeouts.drain
    assert grace and int(grace.group(1)) > drain  # docker's SIGKILL must not cut the drain


def test_demo_backends_are_registered_in_consul_with_health_checks():
    defs = consul_definitions()
    demo = {sid: d for sid, d in defs.items() if d["name"] == "demo"}
    assert set(demo) == {"demo-1", "demo-2"}
    assert all(d["http_check"] for d in defs.values())


def test_the_mounted_lb_config_passes_lb_check():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "LB_"))}
    result = subprocess.run(
        [sys.executable, "-m", "lb", "check", "-c", str(DOCKER / "lb.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lb_config_fits_the_demo(compose):
    config = load(str(DOCKER / "lb.yaml"), environ={}).config
    assert config.consul is not None and config.consul.address == "http://consul:8500"
    lb_ports = published(compose["services"]["lb"])
    assert config.listeners[0].bind[1] in lb_ports.values()
    assert config.admin.bind[1] in lb_ports.values()
    # Every Consul-discovered service names a service that consul.d registers.
    defs = consul_definitions()
    names = {d["name"] for d in defs.values()}
    for svc in config.services.values():
        assert svc.discovery == "consul" and svc.consul is not None
        assert svc.consul.service in names
    # The echo service's tags declare a route that the YAML routes do not clash with.
    catalog = {d["name"]: d["tags"] for d in defs.values()}
    plan = plan_tag_routes(catalog, config, synced=set(catalog))
    assert not plan.conflicts and not plan.problems
    assert [r.name for r in plan.routes] == ["consul:echo"]
    # Self-registration with a check Consul can reach over the compose network.
    spec = registration_spec(config)
    assert spec is not None and spec.check_url == "http://lb:9901/healthz"
    assert "lb" in compose["services"]


def test_prometheus_scrapes_lb_with_its_admin_token(compose):
    prom = compose["services"]["prometheus"]
    assert mounts(prom)["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["scrape_configs"]
    job = next(j for j in scrape if j["job_name"] == "lb")
    config = load(str(DOCKER / "lb.yaml"), environ={}).config
    assert job["static_configs"][0]["targets"] == [f"lb:{config.admin.bind[1]}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # /metrics needs the admin token once admin.token is set; the demo defaults must agree.
    assert job["authorization"]["credentials"] == config.admin.token
    assert compose["services"]["lb"]["environment"]["LB_ADMIN_TOKEN"].endswith(
        f":-{config.admin.token}}}"
    )


def test_dockerfile_essentials(dockerfile):
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and all(" AS " in s for s in stages)  # multi-stage
    runtime_part = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "gcc" not in runtime_part  # the compiler stays in the build stage
    assert "pip wheel" in dockerfile and "lb/_picker" in dockerfile  # the Cython picker built
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "STOPSIGNAL SIGTERM" in lines
    health = next(line for line in lines if line.startswith("HEALTHCHECK "))
    config = load(str(DOCKER / "lb.yaml"), environ={}).config
    assert f":{config.admin.bind[1]}/healthz" in health
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert {config.listeners[0].bind[1], config.admin.bind[1]} <= exposed


def test_build_context_carries_what_the_build_needs():
    allowed = {
        line[1:]
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", "setup.py", "lb", "ext", "docker/lb.yaml", readme} <= allowed
