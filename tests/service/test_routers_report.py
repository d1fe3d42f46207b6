"""/studies/{id}/report, its figures, the link to optuna-dashboard, and the views offline (the pages name
no other host: every script and style comes from this server)."""

import re

import pytest

from tests.service.conftest import SPEC, add_trial

SMOOTH = {"t0": 0.1, "tau": 0.05, "alpha": 0.0}


@pytest.fixture
def study(client, store):
    created = client.post("/studies", json=SPEC).json()
    add_trial(store.storage, created["optuna_study_name"], method="smooth", value=0.6, **SMOOTH)
    add_trial(store.storage, created["optuna_study_name"], method="multitask", value=0.5, alpha=1.0)
    return client.get(f"/studies/{created['id']}").json()


def _hosts(page: str) -> set[str]:
    """Hosts the page loads from (src/href and CSS url()), not the SVG namespace names."""
    urls = re.findall(r'(?:src|href)="(https?://[^"]+)"|url\((https?://[^)]+)\)', page)
    return {re.sub(r"^https?://([^/]+).*", r"\1", a or b) for a, b in urls}


def test_the_study_links_its_report_and_optuna_dashboard(client, study):
    links = study["links"]
    assert links["report"].endswith(f"/studies/{study['id']}/report")
    resp = client.get(links["optuna_dashboard"], follow_redirects=False)
    assert resp.status_code == 307 and resp.headers["location"] == "/dashboard/studies/1"


def test_the_report_page_has_the_plots_the_tables_and_links_and_loads_nothing_from_elsewhere(client, study):
    resp = client.get(study["links"]["report"])
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "<figure id=lambda-plot><svg" in page and "<figure id=methods-plot><svg" in page
    assert "<table id=trials-table>" in page and page.count("<tr>") == 1 + 3 + 1 + 2  # heads, arms, trials
    assert study["links"]["optuna_dashboard"] in page and "fake-ray:8265" in page
    assert _hosts(page) <= {"testserver", "fake-ray:8265"}
    assert "<script" not in page


@pytest.mark.parametrize(
    ("name", "fmt", "magic"), [("lambda", "svg", b"<?xml"), ("methods", "png", b"\x89PNG")]
)
def test_figures_as_files(client, study, name, fmt, magic):
    resp = client.get(f"/studies/{study['id']}/report/{name}.{fmt}")
    assert resp.status_code == 200 and resp.content.startswith(magic)
    assert resp.headers["content-type"].startswith({"svg": "image/svg+xml", "png": "image/png"}[fmt])


def test_unknown_figure_or_study(client, study):
    assert client.get(f"/studies/{study['id']}/report/nope.svg").status_code == 422
    assert client.get("/studies/nope/report").json() == {"detail": "no study nope"}
    assert client.get("/studies/nope/report/lambda.png").status_code == 404


def test_optuna_dashboard_is_served_with_its_api_and_assets(client, study):
    assert (
        "bundle.js" in client.get("/dashboard").text
        and "bundle.js" in client.get("/dashboard/studies/1").text
    )
    assert client.get("/static/bundle.js").status_code == 200
    names = [s["study_name"] for s in client.get("/api/studies").json()["study_summaries"]]
    assert names == [study["optuna_study_name"]]


def test_api_docs_load_their_assets_from_this_server(client):
    page = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert all(client.get(a).status_code == 200 for a in assets)
    assert client.get("/redoc").status_code == 404  # ReDoc's bundle fetches its logo from a CDN: not served
