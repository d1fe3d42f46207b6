"""No Docker engine runs here: check the compose file's structure and the Dockerfile against the code
(services, ports, depends_on, health checks, the GPU reservation, settings the code really reads)."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= set(alias.choices) if alias is not None else {f"TRANSCHED_{name.upper()}"}
    return names


def test_the_four_services_are_there(services):
    assert set(services) == {"postgres", "ray-head", "api", "worker"}


def test_ports_dashboard_8265_api_8000(services):
    assert "8265:8265" in services["ray-head"]["ports"]
    assert "8000:8000" in services["api"]["ports"]
    assert "ports" not in services["worker"], "a published port would stop --scale worker=N"


def test_postgres_has_a_volume_and_a_health_check(compose, services):
    pg = services["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert pg["volumes"][0].split(":")[0] in compose["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_the_head_has_a_health_check_on_its_authenticated_dashboard(services):
    head = services["ray-head"]
    assert "--head" in head["command"] and "--dashboard-port=8265" in head["command"]
    assert "api/version" in " ".join(head["healthcheck"]["test"])


def test_api_waits_for_healthy_postgres_and_head_and_runs_migrations(services):
    api = services["api"]
    assert api["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "ray-head": {"condition": "service_healthy"},
    }
    assert "transched db upgrade" in api["command"] and "transched serve" in api["command"]


def test_workers_join_the_head_and_reserve_gpus(services):
    worker = services["worker"]
    assert "--address=ray-head:6380" in worker["command"]
    assert "--port=6380" in services["ray-head"]["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_environment_names_are_settings_the_code_reads(services):
    known = _settings_env_names() | {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # RAY_AUTH_*: read by Ray itself
    for name, service in services.items():
        if name == "postgres":
            continue
        unknown = set(_env(service)) - known
        assert not unknown, f"{name} sets {unknown}, which nothing reads"
    api = _env(services["api"])
    assert api["TRANSCHED_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert api["RAY_ADDRESS"] == "ray-head:6380"
    assert Settings.model_validate({"RAY_ADDRESS": api["RAY_ADDRESS"]}).ray_address == "ray-head:6380"


def test_secrets_come_from_env_file_with_an_example_checked_in():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    assert used <= set(example), f"not in .env.example: {used - set(example)}"
    literal = re.search(r"^\s*\w*(PASSWORD|TOKEN)\w*:\s+(?!\$\{)\S", text, re.MULTILINE)
    assert not literal, f"a literal secret in docker-compose.yml: {literal and literal.group(0)}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_installs_the_lock_and_the_packages_that_exist_as_a_non_root_user():
    lines = [ln.strip() for ln in (ROOT / "docker" / "Dockerfile").read_text().splitlines()]
    froms = [ln for ln in lines if ln.startswith(("FROM", "ARG BASE_IMAGE"))]
    assert any("python:3.11" in ln for ln in froms), "the lock is compiled for CPython 3.11"
    # The locked environment, nothing resolved on top of it (CUDA comes with the locked torch wheels).
    assert "RUN python -m pip install --no-deps -r requirements.lock" in lines
    assert "COPY requirements.lock ./" in lines
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {ln.split()[1] for ln in lines if ln.startswith("COPY")}
    assert packages <= copied and "pyproject.toml" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
    assert any(ln.startswith("RUN") and "pip install --no-deps --no-build-isolation ." in ln for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert not any(re.match(r"ENV .*(PASSWORD|TOKEN|SECRET)", ln) for ln in lines)
    cmd = next(ln for ln in lines if ln.startswith("CMD"))
    assert "transched" in cmd and "transched" in pyproject["project"]["scripts"]
