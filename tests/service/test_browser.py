"""The study's views in a real browser: headless Chromium (Debian's `chromium`, which `make test` installs
when it is missing) driven by Playwright against the real server, after a finished study of three methods.

Every page must render (the lambda(t) plot, the trials table, Swagger UI's operations, optuna-dashboard's
study), log no console error, and make no request beyond 127.0.0.1: the browser context routes every
request through `Offline`, which lets 127.0.0.1 through and blocks and records anything else.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.db import StudyStatus
from tests.service.test_end_to_end import _serve

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
TRAINER = {"n_target": 60, "epochs": 2, "batch_size": 32}
METHODS = ["smooth", "finetune", "multitask"]
N_TRIALS = 6


class Offline:
    """Records every request a page makes; lets those to 127.0.0.1 through and blocks the others."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.console_errors: list[str] = []

    def route(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def watch(self, page) -> None:
        page.on(
            "console", lambda m: m.type == "error" and self.console_errors.append(f"{page.url}: {m.text}")
        )
        page.on("pageerror", lambda e: self.console_errors.append(f"{page.url}: uncaught {e}"))


def browse(api: str, study: dict, shots: Path) -> Offline:
    """Open the views of `study` (a finished study's GET /studies/{id}) and screenshot each into `shots`."""
    from playwright.sync_api import expect, sync_playwright

    offline = Offline()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", offline.route)
            page = context.new_page()
            offline.watch(page)

            page.goto(f"{api}/docs")
            expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=30_000)
            expect(
                page.locator(".swagger-ui .opblock-summary-path", has_text="/report").first
            ).to_be_visible()
            page.screenshot(path=shots / "docs.png")

            page.goto(f"{api}/dashboard")
            expect(page.get_by_text(study["optuna_study_name"]).first).to_be_visible(timeout=30_000)
            page.screenshot(path=shots / "dashboard.png")

            page.goto(study["links"]["optuna_dashboard"])  # our redirect to the study's page there
            assert "/dashboard/studies/" in page.url, page.url
            expect(page.get_by_text("val_acc").first).to_be_visible(timeout=30_000)  # the objective's name
            page.wait_for_load_state("networkidle")
            page.screenshot(path=shots / "dashboard-study.png", full_page=True)

            page.goto(study["links"]["report"])
            plot = page.locator("#lambda-plot svg")
            expect(plot).to_be_visible()
            box = plot.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 150, box
            expect(page.locator("#trials-table tr")).to_have_count(1 + N_TRIALS)
            expect(page.locator("#methods-table tr")).to_have_count(1 + len(METHODS))
            page.screenshot(path=shots / "report.png", full_page=True)
        finally:
            browser.close()
    return offline


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("transched-browser")
    yield from _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}")


@pytest.fixture(scope="module")
def study(server):
    api = server["api"]
    spec = {"name": "browser", "trainer": TRAINER, "methods": METHODS, "n_trials": N_TRIALS}
    resp = httpx.post(f"{api}/studies", json={**spec, "max_concurrent_trials": 2, "seed": 3}, timeout=60)
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 600
    while not StudyStatus(
        (study := httpx.get(resp.json()["links"]["self"], timeout=30).json())["status"]
    ).terminal:
        assert time.monotonic() < deadline, study
        time.sleep(1)
    assert study["status"] == "completed", study
    return study


@pytest.fixture(scope="module")
def browsed(server, study, tmp_path_factory) -> tuple[Offline, Path]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    shots = tmp_path_factory.mktemp("screenshots")
    return browse(server["api"], study, shots), shots


def test_every_view_renders_without_console_errors(browsed):
    offline, shots = browsed
    assert not offline.console_errors, offline.console_errors
    assert {p.name for p in shots.iterdir()} == {
        "docs.png",
        "dashboard.png",
        "dashboard-study.png",
        "report.png",
    }


def test_no_request_leaves_127_0_0_1(browsed):
    offline, _ = browsed
    assert offline.requests and not offline.blocked, offline.blocked
    assert {urlsplit(u).hostname for u in offline.requests} == {"127.0.0.1"}
    paths = {urlsplit(u).path for u in offline.requests}
    assert {"/static/bundle.js", "/api/studies", "/static-offline-docs/swagger-ui-bundle.js"} <= paths
