"""A small client of the REST API: the one thing the `transched` command talks to.

Each method is one request; a refusal is an `ApiError` carrying the API's one error body
(`{"detail": ...}`, pydantic's field errors joined into one line). The `httpx.Client` is passed in, so
the tests hand it the app itself (FastAPI's TestClient) or an `httpx.MockTransport`.
"""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """The API answered with an error; `str()` is the one line to show."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(f"{detail} (HTTP {status_code})")
        self.status_code = status_code
        self.detail = detail


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except ValueError:
        return resp.text.strip() or resp.reason_phrase
    if isinstance(detail, list):  # pydantic's errors: name each field
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
    return str(detail)


class Api:
    def __init__(self, http: httpx.Client):
        self.http = http

    @classmethod
    def at(cls, base_url: str, *, timeout_s: float = 60.0, token: str | None = None) -> Api:
        """A client of the API at `base_url`; `token` (TRANSCHED_API_TOKEN) is sent as a bearer token."""
        timeout = httpx.Timeout(timeout_s, connect=10.0)  # a study is stored and submitted to Ray in one call
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return cls(httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers))

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _detail(resp))
        return resp

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/studies", json=spec).json()

    def studies(self, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return self._call("GET", "/studies", params={"offset": offset, "limit": limit}).json()

    def study(self, study_id: str) -> dict[str, Any]:
        return self._call("GET", f"/studies/{study_id}").json()

    def trials(self, study_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        params = {"offset": offset, "limit": limit}
        return self._call("GET", f"/studies/{study_id}/trials", params=params).json()

    def best(self, study_id: str, *, method: str | None = None) -> dict[str, Any]:
        params = {"method": method} if method else None
        return self._call("GET", f"/studies/{study_id}/best", params=params).json()

    def stop(self, study_id: str) -> dict[str, Any]:
        return self._call("POST", f"/studies/{study_id}/stop").json()

    def logs(self, study_id: str) -> str:
        return self._call("GET", f"/studies/{study_id}/logs").text

    def report_file(self, study_id: str, name: str) -> bytes:
        """One file of the study's report (`lambda.svg`, `methods.png`, ...)."""
        return self._call("GET", f"/studies/{study_id}/report/{name}").content

    def presets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/presets").json()

    def preset(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/presets/{name}").json()

    def health(self) -> dict[str, Any] | None:
        """The health report, or None while the server does not answer (yet)."""
        try:
            resp = self.http.get("/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None

    def close(self) -> None:
        self.http.close()
