"""The API token (service/auth.py): writes need it, reads need it unless public reads are on, the 401
is the one error body with `WWW-Authenticate: Bearer` and is in OpenAPI, the dashboard's mounts are
guarded by the same rule, the server refuses a non-loopback bind without a token, the CLI and client send
the token, and the token is never logged."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service import auth
from service.api import create_app
from service.cli import Cli, app
from service.client import Api
from service.settings import Settings
from tests.service.conftest import SPEC

TOKEN = "s3cret-token-0123456789"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
WRITES = [("POST", "/studies", SPEC), ("POST", "/studies/nope/stop", None)]
READS = [
    "/studies",
    "/studies/nope",
    "/studies/nope/trials",
    "/studies/nope/best",
    "/studies/nope/logs",
    "/studies/nope/report",
    "/studies/nope/report/lambda.svg",
    "/studies/nope/dashboard",
    "/presets",
    "/dashboard",
    "/api/studies",
    "/static/bundle.js",
]


def _client(settings: Settings, cluster, **changes) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=changes), cluster=cluster))


def _is_401(resp) -> None:
    assert resp.status_code == 401, (resp.request.url, resp.status_code, resp.text[:200])
    assert resp.headers["www-authenticate"] == "Bearer"
    assert set(resp.json()) == {"detail"}


@pytest.mark.parametrize("public_reads", [False, True])
def test_writes_need_the_token_and_reads_unless_public(settings, cluster, public_reads):
    with _client(settings, cluster, api_token=SecretStr(TOKEN), public_reads=public_reads) as c:
        for method, path, body in WRITES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                _is_401(c.request(method, path, json=body, headers=headers))
        assert cluster.submitted == {}  # nothing reached the cluster
        created = c.post("/studies", json=SPEC, headers=GOOD)
        assert created.status_code == 202, created.text
        assert c.post("/studies/nope/stop", headers=GOOD).status_code == 404
        for path in READS:
            resp = c.get(path, follow_redirects=False)
            if public_reads:
                assert resp.status_code != 401, path
            else:
                _is_401(resp)
                assert c.get(path, headers=GOOD, follow_redirects=False).status_code != 401, path
        assert c.get("/healthz").status_code == 200  # the liveness probe stays open
        assert c.get("/openapi.json").status_code == 200


def test_openapi_documents_the_scheme_and_the_401s(settings, cluster):
    with _client(settings, cluster, api_token=SecretStr(TOKEN), public_reads=True) as c:
        schema = c.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"][auth.SCHEME_NAME] == {
        "type": "http",
        "scheme": "bearer",
        "description": "TRANSCHED_API_TOKEN",
    }
    post = schema["paths"]["/studies"]["post"]
    assert post["security"] == [{auth.SCHEME_NAME: []}] and "401" in post["responses"]
    stop = schema["paths"]["/studies/{study_id}/stop"]["post"]
    assert "401" in stop["responses"]
    reads = schema["paths"]["/studies"]["get"]  # public reads: no token, no 401
    assert "security" not in reads and "401" not in reads["responses"]
    with _client(settings, cluster, api_token=SecretStr(TOKEN)) as c:
        reads = c.get("/openapi.json").json()["paths"]["/studies"]["get"]
    assert reads["security"] == [{auth.SCHEME_NAME: []}] and "401" in reads["responses"]


def test_without_a_token_nothing_changes_on_loopback(settings, cluster, client):
    assert client.post("/studies", json=SPEC).status_code == 202
    assert client.get("/studies").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


@pytest.mark.parametrize(
    "host, token, allow, refused",
    [
        ("127.0.0.1", None, False, False),
        ("::1", None, False, False),
        ("localhost", None, False, False),
        ("0.0.0.0", None, False, True),
        ("192.168.1.5", None, False, True),
        ("0.0.0.0", TOKEN, False, False),
        ("0.0.0.0", None, True, False),
    ],
)
def test_a_non_loopback_bind_without_a_token_is_refused(settings, cluster, host, token, allow, refused):
    changes = {"host": host, "api_token": SecretStr(token) if token else None, "allow_unauthenticated": allow}
    assert (auth.bind_problem(settings.model_copy(update=changes)) is not None) == refused
    if refused:
        with pytest.raises(RuntimeError, match="TRANSCHED_API_TOKEN"), _client(settings, cluster, **changes):
            pass
        from typer.testing import CliRunner

        cli = Cli(settings.model_copy(update=changes), "http://127.0.0.1:9")
        result = CliRunner().invoke(app, ["serve"], obj=cli)
        assert result.exit_code == 1 and "TRANSCHED_API_TOKEN" in result.output


def test_the_cli_sends_the_token_from_the_environment(settings, cluster, monkeypatch):
    monkeypatch.setenv("TRANSCHED_API_TOKEN", TOKEN)
    env_settings = Settings(data_dir=settings.data_dir, database_url=settings.database_url)
    with _client(settings, cluster, api_token=SecretStr(TOKEN)) as c:
        cli = Cli(env_settings, "http://testserver")
        cli._api = None
        api = cli.api
        assert api.http.headers["authorization"] == f"Bearer {TOKEN}"
        served = Api(c)
        served.http.headers.update(api.http.headers)
        assert served.submit(SPEC)["status"] == "pending"


def test_the_token_is_never_logged(settings, cluster, caplog):
    caplog.set_level(logging.DEBUG)
    with _client(settings, cluster, api_token=SecretStr(TOKEN)) as c:
        c.post("/studies", json=SPEC, headers=GOOD)
        c.get("/studies", headers={"Authorization": "Bearer wrong-guess"})
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
