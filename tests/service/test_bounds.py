"""Bounded input: every number and list of a spec has a bound the JSON schema states; NaN and the
infinities (JSON literals included), NUL characters and out-of-range numbers are 422 with nothing stored,
on SQLite and on PostgreSQL; offsets past the data are an empty page, huge ones a 422; every datetime in
an answer is UTC-aware."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from tests.service.conftest import SPEC, FakeCluster
from tests.service.test_api import _stored
from trainers.config import field_bounds

BAD = [
    ({"seed": -1}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"trainer": {"seed": 2**32}}, "seed"),
    ({"trainer": {"epochs": 10**9}}, "epochs"),
    ({"trainer": {"batch_size": 10**9}}, "batch_size"),
    ({"trainer": {"image_size": 10**9}}, "image_size"),
    ({"trainer": {"n_target": 10**12}}, "n_target"),
    ({"trainer": {"source_classes": list(range(20_000))}}, "source_classes"),
    ({"trainer": {"source_classes": [-1, 2]}}, "source_classes"),
    ({"name": "x" * 201}, "name"),
    ({"resources_per_trial": {f"r{i}": 1 for i in range(33)}}, "resources_per_trial"),
    ({"resources_per_trial": {"big": 1e300}}, "resources_per_trial"),
    ({"cpus_per_trial": 1e9}, "cpus_per_trial"),
    ({"n_startup_trials": 10**9}, "n_startup_trials"),
    ({"methods": [{"method": "smooth", "tau": {"low": 1e-3, "high": 1e300}}]}, "tau"),
    ({"name": "a\x00b"}, "NUL"),
    ({"trainer": {"device": "cpu\x00"}}, "NUL"),
    ({"resources_per_trial": {"a\x00": 1}}, "NUL"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_client(request, tmp_path):
    from tests.conftest import fresh_database

    with fresh_database(request.param, tmp_path) as url:
        settings = Settings(data_dir=tmp_path, database_url=url)
        with TestClient(create_app(settings, cluster=FakeCluster())) as client:
            yield settings, client


def test_out_of_bounds_and_nul_are_422_and_store_nothing(any_db_client):
    settings, client = any_db_client
    for body, where in BAD:
        resp = client.post("/studies", json={**SPEC, **body})
        assert resp.status_code == 422, (body, resp.text[:300])
        assert where in resp.text, (body, resp.text[:300])
    assert _stored(settings) == 0
    assert client.get("/studies/a%00b").status_code == 404
    assert client.get("/studies/" + "x" * 500).status_code == 404


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["trainer.lr", "trainer.t0", "cpus_per_trial", "methods.tau.low"])
def test_nan_and_infinities_are_422(settings, client, literal, field):
    body = {**SPEC, "trainer": {"lr": 0.1}, "methods": [{"method": "smooth", "tau": {"low": 0.01}}]}
    text = json.dumps(body)
    target = {
        "trainer.lr": ('"lr": 0.1', f'"lr": {literal}'),
        "trainer.t0": ('"lr": 0.1', f'"lr": 0.1, "t0": {literal}'),
        "cpus_per_trial": ('"n_trials": 8', f'"n_trials": 8, "cpus_per_trial": {literal}'),
        "methods.tau.low": ('"low": 0.01', f'"low": {literal}'),
    }[field]
    text = text.replace(*target)
    assert literal in text
    resp = client.post("/studies", content=text, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert _stored(settings) == 0


def test_the_schema_states_every_bound(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    trainer = schema["TrainConfig"]["properties"]
    for name in field_bounds():
        prop = trainer[name]
        text = json.dumps(prop)
        assert any(k in text for k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems")), (name, prop)
    spec = schema["StudySpec"]["properties"]
    assert spec["seed"]["minimum"] == 0 and spec["seed"]["maximum"] == 2**32 - 1
    assert spec["resources_per_trial"]["maxProperties"] == 32
    assert spec["methods"]["maxItems"] == 64


def test_offsets_past_the_data_are_an_empty_page_and_huge_ones_422(client):
    created = client.post("/studies", json=SPEC).json()
    assert client.get("/studies", params={"offset": 5}).json()["items"] == []
    assert client.get(f"/studies/{created['id']}/trials", params={"offset": 10**6}).json()["items"] == []
    for path in ("/studies", f"/studies/{created['id']}/trials"):
        assert client.get(path, params={"offset": 2**63}).status_code == 422


def test_every_datetime_is_utc_aware(client, settings, tmp_path):
    from datetime import datetime

    from tests.service.conftest import add_trial

    created = client.post("/studies", json=SPEC).json()
    study = client.get(f"/studies/{created['id']}").json()
    from service.db import optuna_storage_from

    add_trial(optuna_storage_from(settings), study["optuna_study_name"], method="smooth", value=0.5, t0=0.0)
    stamps = [client.get(f"/studies/{created['id']}").json()["created_at"]]
    stamps += [client.get("/studies").json()["items"][0]["created_at"]]
    trial = client.get(f"/studies/{created['id']}/trials").json()["items"][0]
    stamps += [trial["datetime_start"], trial["datetime_complete"]]
    for stamp in stamps:
        assert stamp and datetime.fromisoformat(stamp).tzinfo is not None, stamp


def test_every_number_list_and_free_string_of_the_trainer_is_bounded():
    """A new TrainConfig field that is a number, a list or a free string needs a bound (annotated-types
    metadata, see trainers/config.py): the schema then states it and the config checks it."""
    import types
    import typing

    from trainers import TrainConfig

    unbounded = []
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = set(typing.get_args(hint)) if union else {hint}
        kinds.discard(type(None))
        plain = {typing.get_origin(k) or k for k in kinds}
        if plain & {int, float, list, str} and name not in field_bounds():
            unbounded.append(name)
    assert unbounded == []
    assert {"n_target", "image_size", "source_classes", "unlabeled_path"} <= set(field_bounds())  # optional
