"""Modules imported on first use. The method registry (names, search spaces, defaults, report keys) is
read by the service's API and its study driver, which never train: with `torch` behind these proxies,
`import trainers` and `trainers.methods` load without it (about 1.7 s and 400 MB less per process), and the
first tensor operation of a trial imports it."""

from __future__ import annotations

import importlib
import sys
from typing import Any


class LazyModule:
    """Stands for the module `name`; any attribute imports it (once) and reads it from the module, so a
    test's monkeypatch of the module is seen."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        module = sys.modules.get(self._name) or importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch: Any = LazyModule("torch")
nn: Any = LazyModule("torch.nn")
F: Any = LazyModule("torch.nn.functional")
