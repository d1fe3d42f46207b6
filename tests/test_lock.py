"""requirements.lock against pyproject.toml and against the environment the tests run in.

The lock (`make lock`: pip-tools' `pip-compile` over pyproject.toml and constraints.txt) is what `make
install` installs with `--no-deps`, so a dependency that reaches pyproject.toml and not the lock would be
missing from every fresh install, and a range moved past its pin would be a range nobody ran. These
checks read both files as pip-tools writes and reads them; they need no network and no resolver."""

from __future__ import annotations

import importlib.metadata
import re
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
REFRESH = "run `make lock UPGRADE=` (README, 'Pinned dependencies')"
# How pip-compile names the pyproject.toml it compiled, in a pin's `# via` lines.
DIRECT = "transched (pyproject.toml)"


def locked(lock_text: str) -> dict[str, tuple[str, set[str]]]:
    """Each pin of a pip-compile output: canonical name -> (version, what it is there for)."""
    pins: dict[str, tuple[str, set[str]]] = {}
    name = None
    for line in lock_text.splitlines():
        # A pin at the line's start; under it `# via x` or `# via` and then one `#   x` a line.
        if pin := re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line):
            name = canonicalize_name(pin[1])
            pins[name] = (pin[2], set())
        elif name and (via := re.fullmatch(r"\s+#\s+(?:via\s+)?(.+)", line)) and via[1] != "via":
            pins[name][1].add(via[1].strip())
    return pins


def requirements(pyproject_text: str) -> list[Requirement]:
    """pyproject.toml's runtime dependencies and its `dev` extra: what the lock is compiled from."""
    project = tomllib.loads(pyproject_text)["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def disagreements(pyproject_text: str, lock_text: str) -> list[str]:
    """Every way the lock fails to be the compilation of pyproject.toml: a requirement with no pin, a pin
    outside its range, a pin the lock says pyproject.toml asked for that it no longer asks for."""
    pins = locked(lock_text)
    wanted = requirements(pyproject_text)
    problems = []
    for req in wanted:
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is in pyproject.toml and not in the lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"the lock has {name}=={pins[name][0]}, outside pyproject.toml's {req}")
        elif DIRECT not in pins[name][1]:
            problems.append(f"the lock does not list {name} as asked for by pyproject.toml")
    direct_names = {canonicalize_name(r.name) for r in wanted}
    problems += [
        f"the lock pins {name} for pyproject.toml, which no longer asks for it"
        for name, (_, via) in sorted(pins.items())
        if DIRECT in via and name not in direct_names
    ]
    return problems


def test_the_lock_is_pyprojects_compilation():
    problems = disagreements(PYPROJECT.read_text(), LOCK.read_text())
    assert not problems, "\n".join(problems) + f"\n{REFRESH}"


def test_a_dependency_added_to_pyproject_only_is_caught():
    text = PYPROJECT.read_text()
    added = text.replace('"tenacity>=', '"cachetools>=5.3",\n    "tenacity>=', 1)
    assert added != text
    assert disagreements(added, LOCK.read_text()) == [
        "cachetools>=5.3 is in pyproject.toml and not in the lock"
    ]
    # A range moved past its pin, and a dependency removed from pyproject.toml only, are caught too.
    raised = re.sub(r'"optuna>=[^"]*"', '"optuna>=99"', text)
    assert disagreements(raised, LOCK.read_text()) == [
        f"the lock has optuna=={locked(LOCK.read_text())['optuna'][0]}, outside pyproject.toml's optuna>=99"
    ]
    removed = re.sub(r'\s*"tenacity>=[^"]*",', "", text)
    assert disagreements(removed, LOCK.read_text()) == [
        "the lock pins tenacity for pyproject.toml, which no longer asks for it"
    ]


def test_lower_bounds_are_the_locked_versions():
    """pyproject.toml's lower bounds are versions the code was run with: the locked ones."""
    pins = locked(LOCK.read_text())
    for req in requirements(PYPROJECT.read_text()):
        lower = [s.version for s in req.specifier if s.operator == ">="]
        pin = pins.get(canonicalize_name(req.name), ("no pin",))[0]
        assert lower == [pin], f"{req}: its lower bound is not the locked version, {pin} ({REFRESH})"


def test_the_torch_pair_is_the_constraint():
    pins = locked(LOCK.read_text())
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert pins[canonicalize_name(req.name)][0] in req.specifier, f"{line} ({REFRESH})"


def test_the_environment_is_the_lock():
    """What `make install` installed is exactly the lock: a package installed at another version (a stray
    `pip install -U`, an install made before the lock changed) fails here, not as a behaviour change."""
    pins = locked(LOCK.read_text())
    # What pip installed into this environment's site-packages, not every dist-info on sys.path: once
    # setuptools is imported, the copies it vendors (packaging, wheel, platformdirs) are on sys.path too.
    site = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=site)
    }
    off = {
        name: (want, installed.get(name)) for name, (want, _) in pins.items() if installed.get(name) != want
    }
    assert not off, (
        f"installed versions differ from requirements.lock (locked, installed): {off}; run `make install`"
    )
