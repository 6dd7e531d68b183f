import hashlib

import pytest

from anonymizer import models


def test_yunet_found_in_model_dir_with_pinned_hash(shared):
    d = models.describe("yunet", shared / "models")
    assert d["sha256"] == models.MODELS["yunet"].sha256


def test_dlib_models_come_from_their_package():
    for name in ("dlib_shape5", "dlib_resnet", "dlib_cnn"):
        assert models.locate(name).name == models.MODELS[name].filename


def test_missing_model_names_file_and_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv(models.MODEL_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.ModelNotFoundError) as err:
        models.locate("yunet", tmp_path / "configured")
    msg = str(err.value)
    assert "face_detection_yunet_2023mar.onnx" in msg
    for place in ("configured/yunet", "env/yunet", ".cache/anonymizer/models", "shared/models"):
        assert place in msg


def test_fetch_verifies_sha256(tmp_path, shared, monkeypatch):
    src = shared / "models" / "yunet" / "face_detection_yunet_2023mar.onnx"
    path = models.fetch("yunet", tmp_path, url=src.as_uri())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == models.MODELS["yunet"].sha256
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        models.fetch("yunet", tmp_path / "other", url=bad.as_uri())
    assert not (tmp_path / "other" / "yunet" / "face_detection_yunet_2023mar.onnx").exists()
