import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

# The PostgreSQL server every developer machine and CI has (trust auth; TRANSCHED_TEST_PG_ADMIN_URL moves
# it). Tests make their own database, as the benchmarks do, with the same helper.
from bench.api_store import PG_ADMIN_URL, PostgresUnreachable, database, free_port

BACKENDS = ["sqlite", "postgresql"]
__all__ = ["BACKENDS", "PG_ADMIN_URL", "free_port", "fresh_database"]


@pytest.fixture
def port() -> int:
    return free_port()


@contextlib.contextmanager
def fresh_database(backend: str, tmp_dir: Path) -> Iterator[str]:
    """A new, empty database of `backend`; dropped afterwards. PostgreSQL being down is a failure,
    not a skip: these tests must run in CI."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(database(backend, tmp_dir, prefix="transched_test"))
        except PostgresUnreachable as exc:
            pytest.fail(f"PostgreSQL is required for these tests: {exc}")
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url
