"""The `transched` command: a client of the REST API (typer for the commands, rich for tables and the
live progress view), plus the commands that run the service itself (serve, demo, down, db).

Exit status: 0 success; 1 an error (one line on stderr: the API's refusal, an unreachable server, a
missing or invalid file); 2 a usage error; and for a watched study (`submit --wait`, `status --watch`,
`demo`) how it ended: 0 completed, 3 failed, 4 stopped (`service.progress.EXIT_CODES`).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from service.client import Api, ApiError
from service.progress import (
    EXIT_CODES,
    STATUS_STYLE,
    TERMINAL,
    Progress,
    duration,
    report_end,
    span_s,
    watch,
)
from service.settings import Settings

__all__ = ["TERMINAL", "EXIT_CODES", "app", "main"]

app = typer.Typer(
    name="transched",
    help="Hyperparameter optimisation of transfer-learning schedules: submit studies, watch them, "
    "fetch and train the best config.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Cli:
    """What every command gets (`ctx.obj`): settings, the API client, and the consoles. Tests pass their
    own through `CliRunner.invoke(app, ..., obj=Cli(...))`."""

    settings: Settings
    api_url: str
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))
    poll_s: float = 2.0  # how often a watched study is polled (the live view redraws 4 times a second)
    _api: Api | None = None

    @property
    def api(self) -> Api:
        if self._api is None:
            token = self.settings.api_token  # TRANSCHED_API_TOKEN, sent as a bearer token
            self._api = Api.at(self.api_url, token=token.get_secret_value() if token else None)
        return self._api


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # A pipe or a CI log: no terminal to fit; do not cut ids, tables or lines at 80 columns.
        console.width, console.soft_wrap = 160, True
    return console


@app.callback()
def _root(
    ctx: typer.Context,
    api: Annotated[
        str | None,
        typer.Option(
            envvar="TRANSCHED_API", help="API base URL (default: http://TRANSCHED_HOST:TRANSCHED_PORT)"
        ),
    ] = None,
) -> None:
    if ctx.obj is None:
        settings = Settings()
        ctx.obj = Cli(settings, (api or settings.api_url).rstrip("/"))
    logging.basicConfig(
        level=ctx.obj.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpcore", "alembic"):  # a line per request is not progress
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Failure(Exception):
    """An error the command reports as one line (`error: ...`) on stderr, exiting 1."""


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` for a function whose first parameter is the `Cli`; the errors a user can cause
    become one line on stderr and exit 1, never a traceback."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(ctx: typer.Context, **kw: Any) -> Any:
            cli: Cli = ctx.find_root().obj
            try:
                return fn(cli, **kw)
            except ApiError as exc:
                message = str(exc)
            except httpx.TransportError as exc:
                message = f"cannot reach the transched API at {cli.api_url}: {exc}"
            except (Failure, FileNotFoundError, ValueError, TimeoutError) as exc:
                # A missing or invalid file, a missing dataset or weights (their messages say how to
                # provide them), an invalid trainer config: the message is the answer.
                message = str(exc)
            cli.err.print(Text(f"error: {message}", style="red"), soft_wrap=True)
            raise typer.Exit(1)

        # typer reads the parameters off the signature: the command's own, with `ctx` in place of `cli`
        # (annotations resolved here: this module's are strings, and typer needs Annotated's metadata).
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [
            p.replace(annotation=hints[p.name]) for p in list(inspect.signature(fn).parameters.values())[1:]
        ]
        ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        run.__signature__ = inspect.Signature([ctx, *params])
        run.__annotations__ = {"ctx": typer.Context, **{p.name: p.annotation for p in params}}
        app.command(name, **kwargs)(run)
        return fn

    return register


def load_spec(path: str) -> dict[str, Any]:
    """A study spec or trainer config from a YAML or JSON file (`-`: stdin)."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no mapping (a study spec is one)")
    return data


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))  # plain: machine-readable output is never wrapped or coloured


def _follow(cli: Cli, study_id: str) -> None:
    """Watch a study to its end, print how it ended, exit with its status (EXIT_CODES)."""
    try:
        study = watch(cli.api, study_id, console=cli.out, every_s=cli.poll_s)
    except KeyboardInterrupt:
        cli.err.print(f"stopped watching; the study goes on: transched status {study_id} --watch")
        raise typer.Exit(130) from None
    code = report_end(study, out=cli.out, err=cli.err, hint=_next_step(study_id))
    raise typer.Exit(code)


def _next_step(study_id: str) -> str:  # after a completed study
    return f"best config: transched best {study_id} -o best.json; then: transched train best.json"


# --- studies -----------------------------------------------------------------------------------------


@command()
def submit(
    cli: Cli,
    file: Annotated[str, typer.Argument(help="study spec, YAML or JSON ('-': stdin)")],
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="show live progress until the study ends")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's answer as JSON")] = False,
) -> None:
    """Submit a study (YAML or JSON); --wait shows live progress.

    With --wait the exit status says how the study ended: 0 completed, 3 failed, 4 stopped."""
    created = cli.api.submit(load_spec(file))
    if as_json:
        _echo_json(created)
    else:
        if created["status"] == "queued":
            cli.out.print(
                f"queued study [bold]{created['id']}[/] ({created['name']}): it starts as Ray job "
                f"{created['ray_job_id']} once fewer studies run than the server allows"
            )
        else:
            cli.out.print(
                f"submitted study [bold]{created['id']}[/] ({created['name']}) as Ray job "
                f"{created['ray_job_id']}"
            )
        if created["links"].get("dashboard"):
            cli.out.print(f"Ray dashboard: {created['links']['dashboard']}")
        if not wait:
            cli.out.print(f"watch it: transched status {created['id']} --watch")
    if wait:
        _follow(cli, created["id"])


@command("list")
def list_studies(
    cli: Cli,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=200)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Studies, newest first."""
    page = cli.api.studies(offset=offset, limit=limit)
    if as_json:
        return _echo_json(page)
    table = Table("ID", "NAME", "STATUS", "TRIALS", "BEST", "METHOD", "ELAPSED", "CREATED", box=None)
    for s in page["items"]:
        p = Progress.of(s)
        best = s["best"]
        table.add_row(
            s["id"],
            s["name"],
            Text(s["status"], style=STATUS_STYLE.get(s["status"], "cyan")),
            f"{p.done}/{p.n_trials}" + (f" ({p.running} running)" if p.running else ""),
            f"{best['value']:.4f}" if best else "-",
            best["params"].get("method", "-") if best else "-",
            duration(p.elapsed_s),
            s["created_at"][:19].replace("T", " "),
        )
    _print_page(cli, table, page, offset=offset, limit=limit)


def _print_page(cli: Cli, table: Table, page: dict[str, Any], *, offset: int, limit: int) -> None:
    """A page's table, and how to get the next page when there is one."""
    cli.out.print(table)
    if page["total"] > offset + len(page["items"]):
        cli.out.print(f"{len(page['items'])} of {page['total']}; more with --offset {offset + limit}")


@command()
def status(
    cli: Cli,
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="live progress until the study ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the full study as JSON")] = False,
) -> None:
    """A study's status, trial counts, best so far and links.

    With --watch: live progress until it ends, exit status as for submit --wait."""
    if watch_:
        _follow(cli, study_id)
    study = cli.api.study(study_id)
    if as_json:
        return _echo_json(study)
    p = Progress.of(study)
    table = Table.grid(padding=(0, 2))
    rows = [
        ("study", f"{study['id']} ({study['name']})"),
        ("status", Text(study["status"], style=STATUS_STYLE.get(study["status"], "cyan"))),
        ("error", Text(study["error"], style="red") if study.get("error") else None),
        ("trials", f"{p.done}/{p.n_trials}: {p.counts_text()}"),
        ("best", p.best_text() + (_params(study["best"]["params"]) if study.get("best") else "")),
        ("time", p.times_text()),
        ("methods", ", ".join(_arm(m) for m in study["spec"]["methods"])),
        ("optuna study", study["optuna_study_name"]),
        ("ray job", study["ray_job_id"]),
        ("dashboard", study["links"].get("dashboard")),
    ]
    for key, value in rows:
        if value is not None:
            table.add_row(Text(key, style="bold"), value)
    cli.out.print(table)


def _arm(method: dict[str, Any]) -> str:
    return method["method"] + ("+schedule" if method.get("schedule") else "")


def _params(params: dict[str, Any], *, skip: tuple[str, ...] = ("method", "schedule")) -> str:
    shown = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if k not in skip
    ]
    return f": {', '.join(shown)}" if shown else ""


@command()
def trials(
    cli: Cli,
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A study's trials: state, method, params, validation accuracy, epochs, node."""
    page = cli.api.trials(study_id, offset=offset, limit=limit)
    if as_json:
        return _echo_json(page)
    table = Table("#", "STATE", "METHOD", "VAL_ACC", "PARAMS", "EPOCHS", "NODE", "TIME", box=None)
    for t in page["items"]:
        took = duration(span_s(t["datetime_start"], t["datetime_complete"])) if t["datetime_start"] else "-"
        table.add_row(
            str(t["number"]),
            Text(
                t["state"],
                style={"COMPLETE": "green", "FAIL": "red", "PRUNED": "yellow"}.get(t["state"], "cyan"),
            ),
            _arm(t["params"]) if "method" in t["params"] else "-",
            f"{t['value']:.4f}" if t["value"] is not None else "-",
            _params(t["params"]).removeprefix(": "),
            str(len(t["epochs"])),
            t["node"] or "-",
            took,
        )
    _print_page(cli, table, page, offset=offset, limit=limit)


@command()
def best(
    cli: Cli,
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="best of one method (or arm, e.g. mixup+schedule)")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write it to this file")] = None,
) -> None:
    """The best trial's full trainer config (JSON), ready for `transched train`."""
    found = cli.api.best(study_id, method=method)
    if output is None:
        return _echo_json(found)
    output.write_text(json.dumps(found, indent=2) + "\n")
    cli.out.print(
        f"wrote {output}: trial {found['trial_number']}, method {found['method']}, "
        f"val_acc {found['val_acc']:.4f}; train it with: transched train {output}"
    )


@command()
def stop(cli: Cli, study_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Stop a study: running trials end, the study ends as stopped."""
    study = cli.api.stop(study_id)
    then = "" if study["status"] in TERMINAL else "; running trials end, then it is stopped"
    cli.out.print(f"study {study_id}: {study['status']}{then}")


@command()
def logs(
    cli: Cli,
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    tail: Annotated[int | None, typer.Option("--tail", "-t", min=1, help="only the last N lines")] = None,
) -> None:
    """The log of the study's driver (its Ray job), through the API."""
    text = cli.api.logs(study_id)
    lines = text.splitlines()
    typer.echo("\n".join(lines[-tail:] if tail else lines))


class Format(StrEnum):
    svg = "svg"
    png = "png"


@command()
def report(
    cli: Cli,
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="directory for the figures", show_default="report-ID"),
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.svg,
) -> None:
    """Download the study's report figures (lambda(t) curves, best accuracy by method).

    lambda.FMT: the lambda(t) curves of the best trials of each method; methods.FMT: the per-method best
    validation accuracy."""
    out_dir = output or Path(f"report-{study_id}")
    files = {name: cli.api.report_file(study_id, f"{name}.{fmt.value}") for name in ("lambda", "methods")}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = out_dir / f"{name}.{fmt.value}"
        path.write_bytes(content)
        cli.out.print(f"wrote {path} ({len(content) / 1024:.0f} KiB)")
    cli.out.print(f"the report page: {cli.api.base_url}/studies/{study_id}/report")


@command()
def presets(
    cli: Cli,
    name: Annotated[
        str | None, typer.Argument(help="show one preset's values and sources (NAME or NAME@VERSION)")
    ] = None,
) -> None:
    """The papers' recipes a study spec can name with "preset"."""
    if name:
        return _echo_json(cli.api.preset(name))
    table = Table("PRESET", "TITLE", "PAPER", box=None)
    for p in cli.api.presets():
        table.add_row(f"{p['name']}@{p['version']}", p["title"], p["paper"])
    cli.out.print(table)
    cli.out.print('use one with {"preset": "NAME", ...} in a study spec; `transched presets NAME` shows it')


# --- training the best config ---------------------------------------------------------------------------


@command()
def train(
    cli: Cli,
    file: Annotated[str, typer.Argument(help="the output of `transched best`, or a trainer config")],
    out: Annotated[Path, typer.Option("--out", help="directory for the checkpoint and metrics")] = Path(
        "runs/best"
    ),
    strict: Annotated[
        bool, typer.Option("--strict", help="exit 1 if val_acc differs from the study's")
    ] = False,
) -> None:
    """Train a config and save the model and its metrics."""
    from trainers import TrainConfig
    from trainers import train as run_training

    data = load_spec(file)
    # Accept the output of `transched best` ({"config": ..., "val_acc": ...}) or a bare trainer config.
    config = TrainConfig.from_dict(data["config"] if "config" in data else data)
    expected = data.get("val_acc")

    def report_epoch(m: dict[str, Any]) -> None:
        cli.out.print(
            f"epoch {m['epoch']:>3}  lambda {m['lambda']:.3f}  lr {m['lr']:.4g}  "
            f"val_acc {m['val_acc']:.4f}  best {m['best_val_acc']:.4f}"
        )

    result = run_training(config, report=report_epoch)
    paths = result.save(out)
    cli.out.print(
        f"best val_acc {result.best_val_acc:.4f} (epoch {result.best_epoch}), test_acc {result.test_acc:.4f}"
    )
    cli.out.print(
        "wrote " + ", ".join(str(p) for p in (paths if isinstance(paths, list | tuple) else [paths]))
    )
    if expected is not None:
        same = abs(result.best_val_acc - expected) < 1e-9
        cli.out.print(f"study reported val_acc {expected:.4f}: {'reproduced' if same else 'DIFFERS'}")
        if not same and strict:
            raise typer.Exit(1)


# --- running the service --------------------------------------------------------------------------------


@command()
def serve(cli: Cli) -> None:
    """Run the REST API (starts a local Ray head unless RAY_ADDRESS is set)."""
    import uvicorn

    from service.api import create_app
    from service.auth import bind_problem
    from service.ray_cluster import dashboard_login_help

    settings = cli.settings
    if problem := bind_problem(settings):
        raise Failure(problem)
    cli.out.print(dashboard_login_help(settings), highlight=False, soft_wrap=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )


def _server_pidfile(settings: Settings) -> Path:
    return settings.data_dir / "server.pid"


def start_server(settings: Settings, api: Api, *, timeout_s: float = 120) -> dict[str, Any]:
    """Start `transched serve` in the background (unless one answers already); its health report."""
    if health := api.health():
        return health
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = open(settings.data_dir / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _server_pidfile(settings).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(
                f"the server exited with code {proc.returncode}; see {settings.data_dir / 'server.log'}"
            )
        health = api.health()
        if health and health.get("ray_dashboard"):
            return health
        time.sleep(0.5)
    raise Failure(
        f"the server did not become healthy within {timeout_s:.0f}s; see {settings.data_dir}/server.log"
    )


@command()
def demo(
    cli: Cli,
    file: Annotated[
        str | None, typer.Option("--file", help="a study spec to run instead of the bundled one")
    ] = None,
) -> None:
    """Start the server, run the bundled demo study with live progress, print the best config."""
    spec = (
        load_spec(file)
        if file
        else json.loads(resources.files("service").joinpath("demo_study.json").read_text())
    )
    cli.out.print(
        f"starting the server on {cli.api_url} (SQLite + a local Ray head; logs in {cli.settings.data_dir})"
    )
    t0 = time.monotonic()
    dashboard = start_server(cli.settings, cli.api).get("ray_dashboard")
    cli.out.print(f"server up in {duration(time.monotonic() - t0)}; Ray dashboard: {dashboard}")
    created = cli.api.submit(spec)
    cli.out.print(f"submitted study {created['id']} (Optuna study {created['optuna_study_name']})")
    study = watch(cli.api, created["id"], console=cli.out, every_s=cli.poll_s)
    code = report_end(study, out=cli.out, err=cli.err)
    if code:
        raise typer.Exit(code)
    found = cli.api.best(created["id"])
    out = cli.settings.data_dir / "best.json"
    out.write_text(json.dumps(found, indent=2) + "\n")
    test_acc = f", test_acc {found['test_acc']:.4f}" if found.get("test_acc") is not None else ""
    method, val_acc = _arm(found["config"]), f"val_acc {found['val_acc']:.4f}"
    params = _params(study["best"]["params"])
    cli.out.print(f"best: trial {found['trial_number']}, {method}, {val_acc}{test_acc}{params}")
    cli.out.print(f"its full config: {out}; train it with: transched train {out}")
    cli.out.print(f"Ray dashboard (Jobs tab shows the study's driver): {created['links'].get('dashboard')}")
    cli.out.print("the server and Ray head keep running; stop them with: transched down")


@command()
def down(cli: Cli) -> None:
    """Stop the server and the local Ray head started by `demo`."""
    from service.ray_cluster import stop_local_head

    pidfile = _server_pidfile(cli.settings)
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGTERM)
            cli.out.print("stopped the server")
        except ProcessLookupError:
            pass
        pidfile.unlink()
    if stop_local_head(cli.settings):
        cli.out.print("stopped the local Ray head")


class DbAction(StrEnum):
    upgrade = "upgrade"
    current = "current"


@command()
def db(cli: Cli, action: Annotated[DbAction, typer.Argument()]) -> None:
    """Schema migrations of the study store (the server also upgrades at start)."""
    from service.db import engine_from
    from service.migrate import current, head, upgrade

    engine = engine_from(cli.settings)
    if action == DbAction.upgrade:
        upgrade(engine)
    where = engine.url.render_as_string(hide_password=True)
    cli.out.print(f"database {where}: revision {current(engine)} (head {head()})")
    engine.dispose()


def main() -> None:
    app(prog_name="transched")


if __name__ == "__main__":
    main()
