"""The database password never leaves the service's own settings: a real study on PostgreSQL whose URL
carries a password (the server here trusts local connections, so any password works), then the data dir,
the head's Ray temp dir, the job's runtime env (job API), the API's answers and the logs hold zero
copies of it. The API token is set too and must not leak either."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import httpx
import pytest

from service.ray_cluster import _temp_dir, driver_database_env, masked_url
from service.settings import Settings
from tests.conftest import fresh_database

PASSWORD = "S3cretXyz"
TOKEN = "api-t0ken-Qw7"
STUDY = {
    "name": "secrets",
    "trainer": {"source": "digits", "target": "digits", "n_target": 40, "epochs": 2},
    "methods": ["smooth", "finetune"],
    "n_trials": 3,
    "max_concurrent_trials": 1,
    "seed": 1,
}


def _hits(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue  # sockets, files gone meanwhile
    return found


def test_a_password_url_is_passed_to_drivers_as_a_private_file(tmp_path):
    url = f"postgresql+psycopg://u:{PASSWORD}@db:5432/x"
    settings = Settings(data_dir=tmp_path, database_url=url)
    env = driver_database_env(settings, local=True)
    assert PASSWORD not in json.dumps(env)
    path = Path(env["TRANSCHED_DATABASE_URL_FILE"])
    assert path.read_text() == url and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert Settings(data_dir=tmp_path, database_url_file=path).resolved_database_url == url
    assert driver_database_env(settings, local=False) == {}  # a remote head: its own env or file
    remote = settings.model_copy(update={"driver_database_url_file": Path("/run/secrets/db")})
    assert driver_database_env(remote, local=False) == {"TRANSCHED_DATABASE_URL_FILE": "/run/secrets/db"}
    sqlite = Settings(data_dir=tmp_path)
    assert driver_database_env(sqlite, local=True) == {"TRANSCHED_DATABASE_URL": sqlite.resolved_database_url}
    assert PASSWORD not in masked_url(url)


def test_tunes_pickles_hold_no_database_url(tmp_path):
    import optuna

    from search_spaces import build_space
    from service.db import make_engine, make_optuna_storage
    from service.db_retry import DbRetry
    from service.driver import StopWhenAsked, TrialSearcher
    from service.ledger import Ledger, plan_study
    from service.schemas import StudySpec

    url = f"sqlite:///{tmp_path / 'o.db'}?password={PASSWORD}"  # a URL that carries the secret
    storage = make_optuna_storage(url)
    spec = StudySpec()
    ledger = Ledger(
        storage,
        name="s",
        connect=make_engine(url).connect,
        db=DbRetry(5),
        sampler=optuna.samplers.TPESampler(seed=0),
        space=build_space(spec.resolved_methods()),
        plan=plan_study(storage, name="s", n_trials=4, attempt=0, arms=list(spec.resolved_methods())),
    )
    searcher = TrialSearcher(ledger, metric="best_val_acc")
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "searcher.pkl"))
    assert PASSWORD.encode() not in (tmp_path / "searcher.pkl").read_bytes()
    import ray.cloudpickle

    assert PASSWORD.encode() not in ray.cloudpickle.dumps(searcher)  # as Tune pickles its Tuner
    stopper = StopWhenAsked(Settings(data_dir=tmp_path, database_url=url), "id")
    stopper._settings.resolved_database_url  # noqa: B018 (cached, as it is once used)
    assert PASSWORD.encode() not in pickle.dumps(stopper)


@pytest.mark.slow
def test_a_real_study_leaves_the_password_nowhere(tmp_path_factory):
    from ray.job_submission import JobSubmissionClient

    from tests.service.test_end_to_end import _serve

    data_dir = tmp_path_factory.mktemp("secrets")
    with fresh_database("postgresql", data_dir) as url:
        secret_url = url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
        assert PASSWORD in secret_url
        server = _serve(data_dir, secret_url, {"TRANSCHED_API_TOKEN": TOKEN})
        info = next(server)
        try:
            api, auth = info["api"], {"Authorization": f"Bearer {TOKEN}"}
            answers = []
            created = httpx.post(f"{api}/studies", json=STUDY, headers=auth, timeout=60)
            assert created.status_code == 202, created.text
            study_id, job_id = created.json()["id"], created.json()["ray_job_id"]
            answers.append(created.text)
            deadline = time.monotonic() + 300
            while True:
                study = httpx.get(f"{api}/studies/{study_id}", headers=auth, timeout=30)
                answers.append(study.text)
                if study.json()["status"] in ("completed", "failed", "stopped"):
                    break
                assert time.monotonic() < deadline, "study did not end"
                time.sleep(1)
            assert study.json()["status"] == "completed", study.json()["error"]
            for path in ("/studies", f"/studies/{study_id}/trials", f"/studies/{study_id}/best", "/healthz"):
                answers.append(httpx.get(f"{api}{path}", headers=auth, timeout=30).text)
            answers.append(httpx.get(f"{api}/studies/{study_id}/logs", headers=auth, timeout=30).text)
            head = json.loads((data_dir / "ray" / "head.json").read_text())
            ray_token = (data_dir / "ray" / "auth_token").read_text().strip()
            jobs = JobSubmissionClient(
                head["dashboard_url"], headers={"Authorization": f"Bearer {ray_token}"}
            )
            job = jobs.get_job_info(job_id)
            head_env = Path(f"/proc/{head['pid']}/environ").read_bytes()
        finally:
            server.close()
        temp_dir = _temp_dir(Settings(data_dir=data_dir))
        for secret in (PASSWORD, TOKEN):
            assert not any(secret in a for a in answers), secret
            assert secret not in json.dumps(job.runtime_env) and secret not in json.dumps(job.metadata)
            # server.log, ray_results, head.log...: only the private file drivers read holds the URL.
            hits = _hits(data_dir, secret.encode())
            assert hits in ([], [str(data_dir / "secrets" / "database_url")]), (secret, hits)
            assert _hits(temp_dir, secret.encode()) == [], secret  # the head's Ray logs and session files
            assert secret.encode() not in head_env
        assert "TRANSCHED_DATABASE_URL_FILE" in job.runtime_env["env_vars"]
        results = list((data_dir / "ray_results").rglob("searcher-state-*.pkl"))
        assert results, "Tune saved no searcher state: the check above would prove nothing"
        assert os.stat(data_dir / "secrets" / "database_url").st_mode & 0o777 == 0o600
