"""GET /presets and /presets/{name}: the papers' recipes a study spec can name (service/presets.py)."""

from __future__ import annotations

from fastapi import APIRouter

from service.errors import NotFound
from service.presets import PRESETS, Preset, UnknownPreset, get_preset
from service.schemas import Problem

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", response_model=list[Preset])
def list_presets() -> list[Preset]:
    """Every preset, every version, by name then version."""
    return sorted(PRESETS.values(), key=lambda p: (p.name, p.version))


@router.get(
    "/{name}", response_model=Preset, responses={404: {"model": Problem, "description": "no such preset"}}
)
def preset(name: str) -> Preset:
    """One preset: ``stl-cifar`` (its newest version) or ``stl-cifar@1``."""
    try:
        return get_preset(name)
    except UnknownPreset as exc:
        raise NotFound(str(exc)) from exc
