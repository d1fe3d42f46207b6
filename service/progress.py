"""Watching a study from the command line: a live progress view on a terminal, plain lines elsewhere.

Everything shown comes from one `GET /studies/{id}` a poll (trial counts by Optuna state, the best trial
so far with its method, the study's timestamps). On a terminal a `rich.live.Live` redraws the view,
so the elapsed time ticks between polls; in CI or a pipe a line is printed when the progress changes,
and at least every `quiet_s` seconds so a log shows the study is alive.

The exit status of `submit --wait`, `status --watch` and `demo` tells how the study ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from service.client import Api
from service.db import StudyStatus

TERMINAL = tuple(s.value for s in StudyStatus if s.terminal)
# How a watched study ended, as the command's exit status (1 is an error of the command itself, 2 a
# usage error: click's own).
EXIT_CODES = {"completed": 0, "failed": 3, "stopped": 4}
STATUS_STYLE = {
    "completed": "green",
    "failed": "bold red",
    "stopped": "yellow",
    "stopping": "yellow",
    "queued": "magenta",
}


@dataclass(frozen=True)
class Progress:
    """A study's progress, from its overview (the API's StudyOut)."""

    status: str
    n_trials: int
    complete: int
    running: int
    pruned: int
    failed: int
    elapsed_s: float
    best: dict[str, Any] | None

    @classmethod
    def of(cls, study: dict[str, Any], *, now: datetime | None = None) -> Progress:
        counts = study["trial_counts"]
        return cls(
            status=study["status"],
            n_trials=study["spec"]["n_trials"],
            complete=counts.get("COMPLETE", 0),
            running=counts.get("RUNNING", 0) + counts.get("WAITING", 0),
            pruned=counts.get("PRUNED", 0),
            failed=counts.get("FAIL", 0),
            elapsed_s=_elapsed_s(study, now or datetime.now(UTC)),
            best=study.get("best"),
        )

    @property
    def done(self) -> int:
        # A resumed study reruns the trials its dead driver left RUNNING (they stay FAIL): more trials end
        # than n_trials, yet the study is done at n_trials.
        return min(self.complete + self.pruned + self.failed, self.n_trials)

    @property
    def eta_s(self) -> float | None:
        """Time left if the trials still to run take as long as those done so far took on average
        (concurrent trials included: it is the study's own pace)."""
        if self.status in TERMINAL:
            return 0.0
        if not self.done or self.status == "stopping":
            return None
        return self.elapsed_s / self.done * max(self.n_trials - self.done, 0)

    def counts_text(self) -> str:
        return (
            f"{self.complete} finished · {self.running} running · {self.pruned} pruned · {self.failed} failed"
        )

    def best_text(self) -> str:
        if self.status == "queued":  # waits for a slot (TRANSCHED_MAX_RUNNING_STUDIES); no driver yet
            return "waiting for a running study to end"
        if not self.best:
            return "no finished trial yet"
        method = self.best["params"].get("method", "?")
        if self.best["params"].get("schedule"):
            method += "+schedule"
        return f"best val_acc {self.best['value']:.4f} ({method}, trial {self.best['number']})"

    def line(self) -> str:
        """The plain progress line (without times)."""
        return (
            f"{self.status}: {self.done}/{self.n_trials} trials ({self.counts_text()}) | {self.best_text()}"
        )

    def times_text(self) -> str:
        eta = self.eta_s
        return f"elapsed {duration(self.elapsed_s)} · left {'?' if eta is None else duration(eta)}"


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def _elapsed_s(study: dict[str, Any], now: datetime) -> float:
    # Since submission: the time the user waits, queueing for the cluster included.
    return span_s(study.get("created_at"), study.get("finished_at"), now=now)


def span_s(start: str | None, end: str | None, *, now: datetime | None = None) -> float:
    """Seconds between two of the API's timestamps (`end` None: until now); 0 without a start."""
    begin, finish = _when(start), _when(end) or now or datetime.now(UTC)
    return max((finish - begin).total_seconds(), 0.0) if begin else 0.0


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StudyView:
    """The live view of one study: status and name, a bar of trials done out of n_trials, the counts,
    the best so far and its method, elapsed and estimated time left. Rendered on every refresh of the
    `Live` display, so the elapsed time ticks between polls."""

    def __init__(self, study: dict[str, Any]):
        self.update(study)

    def update(self, study: dict[str, Any]) -> None:
        self.study = study

    def __rich__(self) -> Group:
        p = Progress.of(self.study)  # now: between polls the elapsed time moves on
        style = STATUS_STYLE.get(p.status, "cyan")
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Spinner("dots", style="cyan") if p.status not in TERMINAL else Text("●", style=style),
            Text(self.study["name"], style="bold"),
            Text(p.status, style=style),
            ProgressBar(total=max(p.n_trials, 1), completed=p.done, width=30),
            Text(f"{p.done}/{p.n_trials} trials"),
            Text(p.times_text(), style="dim"),
        )
        return Group(head, Text(f"  {p.counts_text()}  |  {p.best_text()}"))


def watch(
    api: Api,
    study_id: str,
    *,
    console: Console,
    every_s: float = 2.0,
    quiet_s: float = 15.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Poll a study every `every_s` seconds until it ends; return its last overview."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    study = api.study(study_id)
    if console.is_terminal:
        from rich.live import Live

        view = StudyView(study)
        with Live(view, console=console, refresh_per_second=4):
            while study["status"] not in TERMINAL:
                _wait(every_s, deadline, study_id)
                study = api.study(study_id)
                view.update(study)
        return study
    return _watch_plain(api, study, console=console, every_s=every_s, quiet_s=quiet_s, deadline=deadline)


def _watch_plain(
    api: Api,
    study: dict[str, Any],
    *,
    console: Console,
    every_s: float,
    quiet_s: float,
    deadline: float | None,
) -> dict[str, Any]:
    last, last_at = None, 0.0
    while True:
        p = Progress.of(study)
        if p.line() != last or time.monotonic() - last_at >= quiet_s or p.status in TERMINAL:
            console.print(f"[{duration(p.elapsed_s):>6}] {p.line()} | {p.times_text()}", highlight=False)
            last, last_at = p.line(), time.monotonic()
        if p.status in TERMINAL:
            return study
        _wait(every_s, deadline, study["id"])
        study = api.study(study["id"])


def _wait(every_s: float, deadline: float | None, study_id: str) -> None:
    if deadline is not None and time.monotonic() + every_s > deadline:
        raise TimeoutError(f"study {study_id} did not end in time; it goes on: transched status {study_id}")
    time.sleep(every_s)


def summary(study: dict[str, Any]) -> str:
    """The one line that says how a study ended (or stands)."""
    p = Progress.of(study)
    return (
        f"study {study['id']} ({study['name']}) {p.status} in {duration(p.elapsed_s)}: "
        f"{p.done}/{p.n_trials} trials ({p.counts_text()}); {p.best_text()}"
    )


def report_end(study: dict[str, Any], *, out: Console, err: Console, hint: str | None = None) -> int:
    """Print the summary line, and for a failed study its reason on stderr; return the exit status
    (`EXIT_CODES`). `hint` is the next step, shown after a completed study."""
    style = STATUS_STYLE.get(study["status"], "")
    out.print(Text(summary(study), style=style))
    if study["status"] == "completed" and hint:
        out.print(hint, highlight=False)
    elif study["status"] == "failed":
        err.print(Text(f"reason: {study.get('error') or 'unknown (see transched logs ' + study['id'] + ')'}"))
    return EXIT_CODES.get(study["status"], 1)
