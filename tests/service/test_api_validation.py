"""Bad input is rejected with 422 naming the field, unknown ids get 404, nothing is stored for a
rejected request. No Ray is needed: validation happens before a study is stored or submitted."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api import create_app
from service.db import Study
from service.settings import Settings


@pytest.fixture
def app(tmp_path):
    return create_app(Settings(data_dir=tmp_path, ray_address=None))


@pytest.fixture
def client(app):
    return TestClient(app)  # no `with`: the lifespan (which connects to Ray) does not run


def _stored(app) -> int:
    with app.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(Study))


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
def test_bad_input_gets_422_naming_the_field_and_stores_nothing(app, client, body, loc):
    resp = client.post("/studies", json=body)
    assert resp.status_code == 422, resp.text
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc for e in errors), errors
    assert _stored(app) == 0


@pytest.mark.parametrize(
    "body, words",
    [
        ({"trainer": {"epochs": 0}}, "epochs must be >= 1"),
        ({"methods": [{"method": "smooth", "tau": {"low": 50}}]}, "smooth.tau: low (50.0) must be <= high"),
        ({"methods": ["smooth", "smooth"]}, "methods must be distinct"),
    ],
)
def test_value_errors_name_the_field_in_the_message(app, client, body, words):
    resp = client.post("/studies", json=body)
    assert resp.status_code == 422
    assert words in resp.text
    assert _stored(app) == 0


@pytest.mark.parametrize("path", ["/studies/nope", "/studies/nope/trials", "/studies/nope/best"])
def test_unknown_study_is_404(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert "nope" in resp.json()["detail"]


def test_stop_unknown_study_is_404(client):
    assert client.post("/studies/nope/stop").status_code == 404


def test_valid_study_without_a_reachable_ray_is_503_and_not_stored(app, client):
    resp = client.post("/studies", json={"n_trials": 2})
    assert resp.status_code == 503
    assert _stored(app) == 0


def test_openapi_documents_every_response_code(app):
    spec = app.openapi()
    paths = spec["paths"]
    assert set(paths["/studies"]["post"]["responses"]) >= {"202", "422", "503"}
    assert set(paths["/studies/{study_id}"]["get"]["responses"]) >= {"200", "404", "422"}
    assert set(paths["/studies/{study_id}/best"]["get"]["responses"]) >= {"200", "404", "409"}
    assert set(paths["/studies/{study_id}/stop"]["post"]["responses"]) >= {"202", "404", "409"}
    assert set(paths["/studies/{study_id}/trials"]["get"]["responses"]) >= {"200", "404"}
    assert "200" in paths["/healthz"]["get"]["responses"]


def test_empty_list_is_paginated(client):
    assert client.get("/studies?offset=0&limit=10").json() == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 10,
    }
    assert client.get("/studies?limit=0").status_code == 422
