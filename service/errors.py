"""Domain errors: raised by the domain module (`service.studies`), turned into responses in one place
(`service.api`), all with the one error body `{"detail": ...}` (`service.schemas.Problem`)."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses; `detail` is the message the client reads."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """No study (or preset) by this name."""


class Conflict(DomainError):
    """The study is not in a state that allows this (already ended, nothing completed yet)."""


class ClusterUnavailable(DomainError):
    """The Ray cluster is not reachable, or refused the study's job."""


class InvalidForStudy(DomainError):
    """A valid request that this study or cluster cannot honour (no such method, no GPU)."""


class Unauthorized(DomainError):
    """A missing or wrong API token (answered 401 with `WWW-Authenticate: Bearer`)."""
