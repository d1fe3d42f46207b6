"""Run the benchmarks B1-B6 (or those named) and rewrite their sections of BENCHMARKS.md.

    make bench                                                   # B1-B6, the figures in BENCHMARKS.md
    PYTHONPATH=$PWD .venv/bin/python bench/run_all.py --only B1,B3 [--quick] [--file OTHER.md]
    PYTHONPATH=$PWD .venv/bin/python bench/run_all.py --only B7  # on a GPU machine

Each benchmark is a module bench/bN_*.py with `run(*, quick: bool = False) -> dict` returning
{"id": "B1", "title": str, "lines": [markdown lines], "target": str, "met": bool | None}. Its section of
the file lies between `<!-- bench:BN -->` and `<!-- /bench:BN -->` and is replaced whole, with the
machine (CPU model, cores, torch version), the date and the wall time; a benchmark that is missing or
fails leaves its old section as it was (and a failure makes the exit status 1). `--quick` is a smoke run:
its sections say so, and their targets are not judged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import logging
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IDS = ("B1", "B2", "B3", "B4", "B5", "B6")
ALL_IDS = (*DEFAULT_IDS, "B7")
REQUIRED = {"id": str, "title": str, "lines": list, "target": str}


def find_module(bench_id: str, bench_dir: Path = ROOT / "bench") -> Path | None:
    matches = sorted(bench_dir.glob(f"{bench_id.lower()}_*.py"))
    return matches[0] if matches else None


def load(path: Path) -> ModuleType:
    """The module by its plain name with its folder on sys.path, so that worker processes a benchmark
    spawns can import it (pickled functions are found by module name)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def check(result: Any, bench_id: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise TypeError(f"{bench_id}.run() returned {type(result).__name__}, not a dict")
    for key, kind in REQUIRED.items():
        if not isinstance(result.get(key), kind):
            raise TypeError(f"{bench_id}.run() result: {key!r} must be a {kind.__name__}")
    if result["id"] != bench_id:
        raise ValueError(f"bench module for {bench_id} returned id {result['id']!r}")
    if result.get("met") not in (True, False, None):
        raise TypeError(f"{bench_id}.run() result: 'met' must be True, False or None")
    return result


def section(result: dict[str, Any], *, quick: bool, seconds: float, when: dt.datetime) -> str:
    bench_id = result["id"]
    verdict = {True: "**met**", False: "**missed**", None: "not judged"}[result.get("met")]
    if quick:
        verdict = "not judged (quick smoke run: not the figures)"
    header = [
        f"<!-- bench:{bench_id} -->",
        f"### {bench_id}: {result['title']}",
        "",
        f"Measured {when:%Y-%m-%d %H:%M} UTC by `bench/run_all.py`{' --quick' if quick else ''} in "
        f"{seconds:.0f} s on {machine()}.",
        f"Target: {result['target']}: {verdict}.",
        "",
    ]
    return "\n".join([*header, *result["lines"], f"<!-- /bench:{bench_id} -->"])


def _marker(bench_id: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- bench:{bench_id} -->.*?<!-- /bench:{bench_id} -->", re.S)


def replace_section(text: str, bench_id: str, body: str) -> str:
    """`text` with the section of `bench_id` replaced, or inserted before the next id's section (or at
    the end) when it is not there yet."""
    pattern = _marker(bench_id)
    if pattern.search(text):
        return pattern.sub(lambda _: body, text, count=1)
    later = [m.start() for i in ALL_IDS[ALL_IDS.index(bench_id) + 1 :] if (m := _marker(i).search(text))]
    if later:
        at = min(later)
        return text[:at] + body + "\n\n" + text[at:]
    return text.rstrip("\n") + "\n\n" + body + "\n"


def run_one(bench_id: str, *, quick: bool, bench_dir: Path) -> tuple[dict[str, Any] | None, float, str]:
    """(result or None, seconds, a one-line status)."""
    path = find_module(bench_id, bench_dir)
    if path is None:
        return None, 0.0, f"{bench_id}: skipped, no {bench_dir.name}/{bench_id.lower()}_*.py in this checkout"
    started = time.monotonic()
    try:
        result = check(load(path).run(quick=quick), bench_id)
    except Exception:
        traceback.print_exc()
        return None, time.monotonic() - started, f"{bench_id}: FAILED ({path.name}; section left as it was)"
    seconds = time.monotonic() - started
    met = {True: "target met", False: "target MISSED", None: "target not judged"}[result.get("met")]
    return result, seconds, f"{bench_id}: {result['title']}: {met} ({seconds:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated ids, e.g. B1,B3 (default: B1-B6)")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    p.add_argument("--file", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--bench-dir", type=Path, default=ROOT / "bench", help=argparse.SUPPRESS)  # tests
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ids = [i.strip().upper() for i in args.only.split(",")] if args.only else list(DEFAULT_IDS)
    unknown = [i for i in ids if i not in ALL_IDS]
    if unknown:
        p.error(f"unknown benchmark id(s) {', '.join(unknown)}; known: {', '.join(ALL_IDS)}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    status, failed, total = [], False, time.monotonic()
    for bench_id in ids:
        print(f"== {bench_id}", flush=True)
        result, seconds, line = run_one(bench_id, quick=args.quick, bench_dir=args.bench_dir)
        print(line, flush=True)
        status.append(line)
        failed = failed or "FAILED" in line
        if result is not None:
            print("\n".join(result["lines"]), flush=True)
            when = dt.datetime.now(dt.UTC)
            body = section(result, quick=args.quick, seconds=seconds, when=when)
            text = args.file.read_text() if args.file.exists() else "# Benchmarks\n"
            args.file.write_text(replace_section(text, bench_id, body))  # after each: a later crash keeps it
    print(f"\n{len(ids)} benchmark(s) in {time.monotonic() - total:.0f} s; {args.file}:")
    print("\n".join(f"  {line}" for line in status))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
