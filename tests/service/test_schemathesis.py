"""Schemathesis over the live app's OpenAPI: a real uvicorn server on a free port (a real SQLite store,
the fake cluster of conftest standing in for Ray, the API token set), and for every operation, valid and
invalid requests generated from the schema, sent with and without the token. No answer may be a 5xx,
and every answer must conform to the schema (status code documented, content type, body, headers).
Deterministic (hypothesis derandomized) and bounded: >= 1,000 requests in about a minute here."""

from __future__ import annotations

import threading
import time
from collections import Counter

import hypothesis
import hypothesis.strategies as st
import pytest
import schemathesis
import uvicorn
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api import create_app
from tests.conftest import free_port
from tests.service.conftest import FakeCluster

pytestmark = pytest.mark.slow

TOKEN = "schemathesis-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = {"POST /studies": 250}  # the largest input space; every other operation:
DEFAULT_EXAMPLES = 75
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("schemathesis")
    from service.settings import Settings

    settings = Settings(data_dir=data_dir, api_token=SecretStr(TOKEN), log_level="WARNING")
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, cluster=FakeCluster()), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_no_5xx_and_every_answer_conforms(live_api):
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
    sent: Counter[str] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    for operation in operations:
        t0 = time.monotonic()
        _fuzz(operation, live_api, sent, failures)
        print(f"{operation.label}: {sent[operation.label]} requests in {time.monotonic() - t0:.1f}s")
    total = sum(sent.values())
    print(f"schemathesis: {total} requests over {len(sent)} operations: {dict(sent)}")
    distinct = {f.split("Reproduce with")[0]: f for f in failures}  # one of each kind
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(list(distinct.values())[:15])
    assert total >= MIN_REQUESTS, sent


def _fuzz(operation, live_api: str, sent: Counter[str], failures: list[str]) -> None:
    strategy = st.tuples(
        st.one_of(
            operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        ),
        st.booleans(),  # with the token, or without (then the documented 401)
    )

    @hypothesis.settings(
        max_examples=EXAMPLES.get(operation.label, DEFAULT_EXAMPLES),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @hypothesis.given(strategy)
    def run(drawn):
        case, with_token = drawn
        headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
        sent[operation.label] += 1
        try:
            case.call_and_validate(base_url=live_api, headers=headers, checks=CHECKS, timeout=30)
        except (Exception, BaseExceptionGroup) as exc:  # collect: one run shows every operation's failures
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:600]}")

    run()
