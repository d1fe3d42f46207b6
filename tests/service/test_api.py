"""The app: its lifespan, bad input rejected with FastAPI's 422 naming the field, domain errors mapped to
one error body, the OpenAPI document. A fake cluster stands in for Ray (tests/service/conftest.py)."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api import create_app
from service.db import Study, engine_from, make_sessionmaker
from service.ray_cluster import RayUnavailable
from tests.service.conftest import SPEC


def _stored(settings) -> int:
    engine = engine_from(settings)
    try:
        with make_sessionmaker(engine)() as s:
            return s.scalar(select(func.count()).select_from(Study))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"trainer": {"target": "imagenet"}}, ["body", "trainer", "target"]),
        ({"trainer": {"source": "nope"}}, ["body", "trainer", "source"]),
        ({"trainer": {"backbone": "vgg"}}, ["body", "trainer", "backbone"]),
        ({"methods": ["mixmatch"]}, ["body", "methods", 0]),
        ({"n_trials": 0}, ["body", "n_trials"]),
        ({"gpus_per_trial": -0.5}, ["body", "gpus_per_trial"]),
        (
            {"methods": [{"method": "smooth", "tau": {"low": 2, "high": 1}}]},
            ["body", "methods", 0, "smooth", "tau"],
        ),
        ({"surprise": 1}, ["body", "surprise"]),
        ({"trainer": {"epochs": 3, "learning_rate": 0.1}}, ["body", "trainer", "learning_rate"]),
        (
            {"methods": [{"method": "finetune", "alpha": {"low": 0, "high": 1}}]},
            ["body", "methods", 0, "finetune", "alpha"],
        ),
    ],
)
def test_bad_input_gets_422_naming_the_field_and_stores_nothing(settings, client, cluster, body, loc):
    resp = client.post("/studies", json=body)
    assert resp.status_code == 422, resp.text
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc for e in errors), errors
    assert _stored(settings) == 0 and cluster.jobs == {}


@pytest.mark.parametrize(
    "body, words",
    [
        ({"trainer": {"lr": 0.1, "final_lr": 0.5}}, "final_lr must be in [0, lr]"),
        ({"methods": [{"method": "smooth", "tau": {"low": 50}}]}, "smooth.tau: low (50.0) must be <= high"),
        ({"methods": ["smooth", "smooth"]}, "methods must be distinct"),
    ],
)
def test_value_errors_name_the_field_in_the_message(settings, client, body, words):
    resp = client.post("/studies", json=body)
    assert resp.status_code == 422
    assert words in resp.text
    assert _stored(settings) == 0


@pytest.mark.parametrize("path", ["/studies/nope", "/studies/nope/trials", "/studies/nope/best"])
def test_unknown_study_is_404_with_the_one_error_body(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.json() == {"detail": "no study nope"}


def test_stop_unknown_study_is_404(client):
    resp = client.post("/studies/nope/stop")
    assert resp.status_code == 404 and resp.json() == {"detail": "no study nope"}


def _unreachable(settings):
    raise RayUnavailable("no head")


def test_without_a_reachable_cluster_the_api_answers_but_refuses_studies_with_503(settings):
    with TestClient(create_app(settings, connect=_unreachable)) as client:
        assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "ray_dashboard": None}
        resp = client.post("/studies", json={"n_trials": 2})
        assert resp.status_code == 503
        assert resp.json() == {"detail": "the Ray cluster is not reachable"}
        assert client.get("/studies").json()["total"] == 0
    assert _stored(settings) == 0


def test_the_lifespan_connects_once_and_hands_the_cluster_to_every_request(settings, cluster):
    calls = []

    def connect(s):
        calls.append(s)
        return cluster

    with TestClient(create_app(settings, connect=connect)) as client:
        for _ in range(3):
            assert client.get("/healthz").json()["ray_dashboard"] == cluster.dashboard_url
        created = client.post("/studies", json=SPEC).json()
        assert created["links"]["dashboard"] == f"{cluster.dashboard_url}/#/jobs/{created['ray_job_id']}"
    assert calls == [settings]


def test_openapi_documents_every_response_code(settings):
    spec = create_app(settings).openapi()  # no lifespan: the document needs no database or cluster
    paths = spec["paths"]
    assert set(paths["/studies"]["post"]["responses"]) >= {"202", "422", "503"}
    assert set(paths["/studies/{study_id}"]["get"]["responses"]) >= {"200", "404", "422"}
    assert set(paths["/studies/{study_id}/best"]["get"]["responses"]) >= {"200", "404", "409"}
    assert set(paths["/studies/{study_id}/stop"]["post"]["responses"]) >= {"202", "404", "409"}
    assert set(paths["/studies/{study_id}/trials"]["get"]["responses"]) >= {"200", "404"}
    assert "200" in paths["/healthz"]["get"]["responses"]
    problem = {"$ref": "#/components/schemas/Problem"}
    assert paths["/studies/{study_id}/best"]["get"]["responses"]["409"]["content"]["application/json"] == {
        "schema": problem
    }


def test_empty_list_is_paginated(client):
    assert client.get("/studies?offset=0&limit=10").json() == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 10,
    }
    assert client.get("/studies?limit=0").status_code == 422
