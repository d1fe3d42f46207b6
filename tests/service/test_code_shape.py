"""The shape the project's standards ask of service/: no function over 80 lines, and nothing private of
Ray or Optuna (issue 17): no import of a module or name of theirs starting with `_`, and the issue's
acceptance grep finds nothing."""

import ast
import re
import shutil
import subprocess
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
MAX_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(
                        f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)"
                    )
    return found


def test_no_function_in_service_is_over_80_lines():
    assert long_functions(SERVICE, MAX_LINES) == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n\n\ndef short():\n    pass\n")
    assert [f.split(" ")[1] for f in long_functions(tmp_path, MAX_LINES)] == ["too_long"]


# The libraries whose internals service/ must not use, and their modules that are not public API though
# no part of their path starts with `_` (a module and everything under it).
LIBRARIES = ("ray", "optuna")
NOT_PUBLIC = ("ray.tune.utils.util",)


def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] not in LIBRARIES:
        return False
    return any(p.startswith("_") for p in parts) or any(
        dotted == m or dotted.startswith(m + ".") for m in NOT_PUBLIC
    )


def private_imports(root: Path) -> list[str]:
    """`path:line import` of every import of a private module or name of ray or optuna under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
            else:
                continue
            found += [f"{path.relative_to(root.parent)}:{node.lineno} {n}" for n in names if _private(n)]
    return found


def acceptance_grep(root: Path) -> list[str]:
    """Issue 17's `grep -rnE "\\._[a-z]" service | grep -iE "optuna|tune|ray"`, run from root's parent:
    every `path:lineno:line` of a text file under `root` with `._<lowercase>` in the line and optuna, tune
    or ray (any case) anywhere in the whole `path:lineno:line`, the path included."""
    attribute, library = re.compile(r"\._[a-z]"), re.compile("optuna|tune|ray", re.IGNORECASE)
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if b"\0" in data:  # grep reports a binary file's match on stderr, not as a line
            continue
        name = path.relative_to(root.parent).as_posix()
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            hit = f"{name}:{number}:{line}"
            if attribute.search(line) and library.search(hit):
                found.append(hit)
    return found


def test_service_imports_nothing_private_of_ray_or_optuna():
    assert private_imports(SERVICE) == []


def test_issue_17s_acceptance_grep_finds_no_private_attribute_in_service():
    found = acceptance_grep(SERVICE)
    assert not found, "private attributes (or lines the grep takes for them):\n" + "\n".join(found)


def test_the_checks_find_private_imports_and_attributes(tmp_path):
    root = tmp_path / "service"
    root.mkdir()
    (root / "a.py").write_text(
        "import ray._private.worker\n"
        "from optuna.study._frozen import FrozenStudy\n"
        "from optuna.study import _study_direction\n"
        "from ray.tune.utils.util import unflatten_dict\n"
        "from ray.tune.utils import util\n"
        "from optuna.study import StudyDirection\n"  # public: not found
        "from ray.util.state import StateApiClient\n"
        "from ._local import x\n"  # ours, relative
        "import _thread\n"
        "x = study._storage\n"
    )
    (root / "ray_thing.py").write_text("self._client = None\n")  # the path names ray: the grep finds it
    (root / "b.py").write_text("self._client = None\n")  # nothing of the libraries on the line: not found
    assert [f.split(" ")[1] for f in private_imports(root)] == [
        "ray._private.worker",
        "optuna.study._frozen",
        "optuna.study._frozen.FrozenStudy",
        "optuna.study._study_direction",
        "ray.tune.utils.util",
        "ray.tune.utils.util.unflatten_dict",
        "ray.tune.utils.util",
    ]
    assert acceptance_grep(root) == [
        "service/a.py:1:import ray._private.worker",
        "service/a.py:2:from optuna.study._frozen import FrozenStudy",
        "service/ray_thing.py:1:self._client = None",
    ]
    if shutil.which("grep") and shutil.which("sh"):  # and it finds what the grep itself finds
        pipeline = 'grep -rnE "\\._[a-z]" service | grep -iE "optuna|tune|ray"'
        out = subprocess.run(["sh", "-c", pipeline], cwd=tmp_path, capture_output=True, text=True).stdout
        assert sorted(out.splitlines()) == acceptance_grep(root)
