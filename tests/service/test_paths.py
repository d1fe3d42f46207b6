"""Paths in a spec stay inside: every path-valued trainer field (trainers.config.PATH_FIELDS) must
resolve, symlinks and `..` followed, under the data dir or a directory of TRANSCHED_ALLOWED_DATA_DIRS;
anything else is a 422 naming the field, nothing is stored, and no message says what a folder holds."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from tests.service.conftest import SPEC
from tests.service.test_api import _stored
from trainers import TrainConfig
from trainers.config import PATH_FIELDS
from trainers.data import DatasetNotFoundError, load_transfer_data


def _post(client, **trainer):
    return client.post("/studies", json={**SPEC, "trainer": trainer})


@pytest.mark.parametrize(
    "field, value",
    [
        ("source_path", "/etc"),
        ("target_path", "../../.."),
        ("init_checkpoint", "/etc/shadow"),
        ("artifact_dir", "/tmp/elsewhere"),
        ("data_dir", "data/../../outside"),
        ("unlabeled_path", "/"),
    ],
)
def test_a_path_outside_is_422_naming_the_field(settings, client, cluster, field, value):
    extra = {
        "source_path": {"source": "imagefolder"},
        "target_path": {"target": "imagefolder"},
        "init_checkpoint": {"init": "checkpoint"},
        "unlabeled_path": {"unlabeled": "imagefolder"},
    }.get(field, {})
    resp = _post(client, **extra, **{field: value})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"].startswith(f"trainer.{field}: ")
    assert _stored(settings) == 0 and cluster.jobs == {}


def test_a_symlink_out_of_the_data_dir_is_outside(settings, client, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (settings.data_dir / "link").symlink_to(outside)
    resp = _post(client, target="imagefolder", target_path="link")
    assert resp.status_code == 422 and "trainer.target_path" in resp.text


def test_paths_inside_and_in_allowed_dirs_are_kept(settings, cluster, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("datasets")
    app = create_app(settings.model_copy(update={"allowed_data_dirs": [allowed]}), cluster=cluster)
    with TestClient(app) as client:
        inside = _post(client, target="imagefolder", target_path="imgs/../imgs2", artifact_dir="art")
        assert inside.status_code == 202, inside.text
        spec = client.get(f"/studies/{inside.json()['id']}").json()["spec"]["trainer"]
        assert spec["target_path"] == str((settings.data_dir / "imgs2").resolve())
        ok = _post(client, source="imagefolder", source_path=str(allowed / "src"), data_dir=str(allowed))
        assert ok.status_code == 202, ok.text
        refused = _post(client, data_dir=str(allowed.parent))
        assert refused.status_code == 422


def test_every_path_field_is_confined():
    # A path field added to TrainConfig without a place in PATH_FIELDS would escape confinement.
    pathish = {n for n in TrainConfig.__dataclass_fields__ if n.endswith(("_path", "_dir", "_checkpoint"))}
    assert pathish <= set(PATH_FIELDS)


def test_imagefolder_errors_never_list_the_folder(tmp_path):
    root = tmp_path / "secret_tree"
    for name in ("alpha_private", "beta_private"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("x")
    cfg = TrainConfig(source="digits", target="imagefolder", target_path=str(root))
    with pytest.raises(DatasetNotFoundError) as err:
        load_transfer_data(cfg)
    assert "private" not in str(err.value) and err.value.__cause__ is None
