"""The building guest's layer operation refuses paths that leave the image root
(it runs on the host here, against a temporary root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyro_mcp.guest import fileops, layers


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("keep")
    (image / "escape").symlink_to(tmp_path / "outside")
    monkeypatch.setattr(layers, "ROOT", str(image))
    monkeypatch.setattr(layers, "BLOBS", str(tmp_path / "blobs"))
    return image


def test_removals_stay_inside_the_image_root(root: Path) -> None:
    assert layers._inside("etc/passwd") == f"{root}/etc/passwd"
    assert layers._inside("/etc/passwd") == f"{root}/etc/passwd"
    for bad in ("../x", "etc/../../x", "", "."):
        with pytest.raises(fileops.RequestError):
            layers._inside(bad)
    with pytest.raises(fileops.RequestError, match="link out of the image root"):
        layers._inside("escape/precious")
    assert (root.parent / "outside" / "precious").read_text() == "keep"


def test_a_blob_is_named_by_its_digest_only(root: Path) -> None:
    for bad in ("../../etc/passwd", "a/b", "", 3):
        with pytest.raises(fileops.RequestError):
            layers.op_layer_apply({"blob": bad})
    with pytest.raises(fileops.RequestError, match="no layer blob"):
        layers.op_layer_apply({"blob": "ab" * 32})
