"""The `transched` command: serve | submit FILE | status ID | best ID | train FILE | presets [NAME] | demo |
down | db."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from service.settings import Settings

TERMINAL = ("completed", "stopped", "failed")


def _api(args: argparse.Namespace, settings: Settings) -> str:
    return (args.api or settings.api_url).rstrip("/")


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text
        if isinstance(detail, list):  # pydantic errors: name the field
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
        raise SystemExit(f"error {resp.status_code}: {detail}")
    return resp.json()


def _summary(study: dict[str, Any]) -> str:
    counts = (
        ", ".join(f"{n} {s.lower()}" for s, n in sorted(study["trial_counts"].items())) or "no trials yet"
    )
    total = study["spec"]["n_trials"]
    best = study.get("best")
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in (best or {}).get("params", {}).items()
    )
    best_s = f" | best val_acc {best['value']:.4f} (trial {best['number']}: {params})" if best else ""
    return f"{study['status']}: {counts} of {total}{best_s}"


def watch(api: str, study_id: str, *, every_s: float = 2.0, timeout_s: float | None = None) -> dict[str, Any]:
    """Poll a study until it ends, printing a line whenever its progress changes."""
    start, last = time.monotonic(), None
    with httpx.Client(timeout=30) as client:
        while True:
            study = _check(client.get(f"{api}/studies/{study_id}"))
            line = _summary(study)
            if line != last:
                print(f"[{time.monotonic() - start:6.1f}s] {line}", flush=True)
                last = line
            if study["status"] in TERMINAL:
                return study
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise SystemExit(f"study {study_id} did not end within {timeout_s:.0f}s")
            time.sleep(every_s)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.api import create_app
    from service.ray_cluster import dashboard_login_help

    print(dashboard_login_help(settings), flush=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    spec = json.loads(Path(args.file).read_text())
    api = _api(args, settings)
    created = _check(httpx.post(f"{api}/studies", json=spec, timeout=60))
    print(json.dumps(created, indent=2))
    if args.wait:
        study = watch(api, created["id"])
        return 0 if study["status"] == "completed" else 1
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    api = _api(args, settings)
    if args.watch:
        study = watch(api, args.id)
    else:
        study = _check(httpx.get(f"{api}/studies/{args.id}", timeout=30))
        print(_summary(study))
    if args.json:
        print(json.dumps(study, indent=2))
    return 0


def cmd_best(args: argparse.Namespace, settings: Settings) -> int:
    best = _check(httpx.get(f"{_api(args, settings)}/studies/{args.id}/best", timeout=30))
    text = json.dumps(best, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}: method {best['method']}, val_acc {best['val_acc']:.4f}")
    else:
        print(text)
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from trainers import TrainConfig, train

    data = json.loads(Path(args.file).read_text())
    # Accept the output of `transched best` ({"config": ..., "val_acc": ...}) or a bare trainer config.
    config = TrainConfig.from_dict(data["config"] if "config" in data else data)
    expected = data.get("val_acc")

    def report(m: dict[str, Any]) -> None:
        print(
            f"epoch {m['epoch']:>3}  lambda {m['lambda']:.3f}  lr {m['lr']:.4g}  "
            f"val_acc {m['val_acc']:.4f}  best {m['best_val_acc']:.4f}",
            flush=True,
        )

    result = train(config, report=report)
    out = Path(args.out)
    paths = result.save(out)
    print(
        f"best val_acc {result.best_val_acc:.4f} (epoch {result.best_epoch}), test_acc {result.test_acc:.4f}"
    )
    print("wrote " + ", ".join(str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])))
    if expected is not None:
        same = abs(result.best_val_acc - expected) < 1e-9
        print(f"study reported val_acc {expected:.4f}: {'reproduced' if same else 'DIFFERS'}")
        if not same and args.strict:
            return 1
    return 0


def cmd_presets(args: argparse.Namespace, settings: Settings) -> int:
    api = _api(args, settings)
    if args.name:
        print(json.dumps(_check(httpx.get(f"{api}/presets/{args.name}", timeout=30)), indent=2))
        return 0
    for p in _check(httpx.get(f"{api}/presets", timeout=30)):
        print(f"{p['name']}@{p['version']:<4} {p['title']}\n{'':8}{p['paper']}")
    print('\nuse one with {"preset": "NAME", ...} in a study spec; `transched presets NAME` shows its values')
    return 0


# --- demo: the whole path on the embedded defaults ------------------------------------------------------


def _server_pidfile(settings: Settings) -> Path:
    return settings.data_dir / "server.pid"


def _healthy(api: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{api}/healthz", timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def start_server(settings: Settings, *, timeout_s: float = 120) -> str:
    api = settings.api_url
    if _healthy(api):
        return api
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
            raise SystemExit(
                f"the server exited with code {proc.returncode}; see {settings.data_dir / 'server.log'}"
            )
        health = _healthy(api)
        if health and health.get("ray_dashboard"):
            return api
        time.sleep(0.5)
    raise SystemExit(
        f"the server did not become healthy within {timeout_s:.0f}s; see {settings.data_dir}/server.log"
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    spec_text = (
        Path(args.file).read_text()
        if args.file
        else resources.files("service").joinpath("demo_study.json").read_text()
    )
    print(
        f"starting the server on {settings.api_url} (SQLite + a local Ray head; logs in {settings.data_dir})"
    )
    t0 = time.monotonic()
    api = start_server(settings)
    health = _healthy(api) or {}
    print(f"server up in {time.monotonic() - t0:.0f}s; Ray dashboard: {health.get('ray_dashboard')}")
    created = _check(httpx.post(f"{api}/studies", json=json.loads(spec_text), timeout=60))
    print(f"submitted study {created['id']} (Optuna study {created['optuna_study_name']})")
    study = watch(api, created["id"])
    if study["status"] != "completed":
        print(f"study ended {study['status']}: {study.get('error')}")
        return 1
    best = _check(httpx.get(f"{api}/studies/{created['id']}/best", timeout=30))
    out = settings.data_dir / "best.json"
    out.write_text(json.dumps(best, indent=2) + "\n")
    print("\nbest config:")
    print(json.dumps(best, indent=2))
    elapsed = time.monotonic() - t0
    print(f"\nstudy finished in {elapsed:.0f}s; best val_acc {best['val_acc']:.4f} ({best['method']})")
    print(f"best config written to {out}; train it with: transched train {out}")
    print(f"Ray dashboard (Jobs tab shows the study's driver): {health.get('ray_dashboard')}")
    print("the server and Ray head keep running; stop them with: transched down")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from service.ray_cluster import stop_local_head

    pidfile = _server_pidfile(settings)
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGTERM)
            print("stopped the server")
        except ProcessLookupError:
            pass
        pidfile.unlink()
    if stop_local_head(settings):
        print("stopped the local Ray head")
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import engine_from
    from service.migrate import current, head, upgrade

    engine = engine_from(settings)
    if args.action == "upgrade":
        upgrade(engine)
    where = engine.url.render_as_string(hide_password=True)
    print(f"database {where}: revision {current(engine)} (head {head()})")
    engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transched", description=__doc__)
    p.add_argument("--api", help="API base URL (default http://TRANSCHED_HOST:TRANSCHED_PORT)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the REST API (starts a local Ray head unless RAY_ADDRESS is set)")
    s = sub.add_parser("submit", help="submit a study spec (JSON file)")
    s.add_argument("file")
    s.add_argument("--wait", action="store_true", help="show progress until the study ends")
    s = sub.add_parser("status", help="a study's status, trial counts and best so far")
    s.add_argument("id")
    s.add_argument("--watch", action="store_true", help="poll until the study ends")
    s.add_argument("--json", action="store_true", help="print the full study as JSON")
    s = sub.add_parser("best", help="the best config of a study, for `transched train`")
    s.add_argument("id")
    s.add_argument("-o", "--output", help="write it to this file")
    s = sub.add_parser("train", help="train a config (best.json or a trainer config) and save it")
    s.add_argument("file")
    s.add_argument("--out", default="runs/best", help="directory for the checkpoint and metrics")
    s.add_argument("--strict", action="store_true", help="exit 1 if val_acc differs from the study's")
    s = sub.add_parser("presets", help='the papers\' recipes a study spec can name with "preset"')
    s.add_argument("name", nargs="?", help="show one preset's values and sources (NAME or NAME@VERSION)")
    s = sub.add_parser("demo", help="start the server, run the bundled demo study, print the best config")
    s.add_argument("--file", help="a study spec to run instead of the bundled one")
    sub.add_parser("down", help="stop the server and the local Ray head started by `demo`")
    s = sub.add_parser("db", help="schema migrations of the study store (the server also upgrades at start)")
    s.add_argument("action", choices=["upgrade", "current"])
    return p


COMMANDS = {
    "serve": cmd_serve,
    "submit": cmd_submit,
    "status": cmd_status,
    "best": cmd_best,
    "train": cmd_train,
    "presets": cmd_presets,
    "demo": cmd_demo,
    "down": cmd_down,
    "db": cmd_db,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args, settings)
    except httpx.ConnectError as exc:
        raise SystemExit(f"cannot reach the transched API at {_api(args, settings)}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {args.file} is not valid JSON: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        # A missing spec/config file, a missing dataset or weights (their messages say how to provide
        # them), an invalid trainer config: the message is the answer, a traceback would hide it.
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main())
