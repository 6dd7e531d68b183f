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


def test_a_missing_packaged_model_names_the_folder_it_is_looked_for_in(tmp_path, monkeypatch):
    """MediaPipe's files share one folder in a model directory; the error names that folder, and a file placed
    there is found."""
    monkeypatch.setenv(models.MODEL_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    spec = models.MODELS["mediapipe_palm"]
    monkeypatch.setitem(models.MODELS, "mediapipe_palm",
                        models.ModelSpec(**{**spec.__dict__, "package": "no_such_package_here"}))
    with pytest.raises(models.ModelNotFoundError, match=r"<model dir>/mediapipe/"):
        models.locate("mediapipe_palm", tmp_path)
    (tmp_path / "mediapipe").mkdir()
    (tmp_path / "mediapipe" / spec.filename).write_bytes(b"x")
    assert models.locate("mediapipe_palm", tmp_path) == tmp_path / "mediapipe" / spec.filename


def test_fetch_verifies_sha256(tmp_path, shared, monkeypatch):
    src = shared / "models" / "yunet" / "face_detection_yunet_2023mar.onnx"
    path = models.fetch("yunet", tmp_path, url=src.as_uri())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == models.MODELS["yunet"].sha256
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        models.fetch("yunet", tmp_path / "other", url=bad.as_uri())
    assert not (tmp_path / "other" / "yunet" / "face_detection_yunet_2023mar.onnx").exists()


def test_graphs_are_made_once_then_read_without_importing_onnx_or_torch(tmp_path, shared):
    """The free-sized graphs YuNet, CenterFace, SCRFD and MobileFaceNet run, and the graphs written from the
    torch weights of RetinaFace, MTCNN and dlib's ResNet, are made by the first process and kept: a later
    process builds the same networks from the kept bytes without importing onnx (0.7 s) or torch (2 s)."""
    import subprocess
    import sys

    models = str(shared / "models")
    code = ("import sys; from pathlib import Path; from anonymizer import onnx_runtime; "
            f"onnx_runtime.DERIVED_DIR = Path({str(tmp_path)!r}); "
            "from anonymizer.detect import build_detector; from anonymizer.measure.encoder import build_encoder; "
            f"d = [build_detector(n, {{}}, {models!r}) for n in ('yunet', 'centerface', 'scrfd', 'retinaface', 'mtcnn')]; "
            f"e = [build_encoder(n, {{'device': 'cpu'}}, {models!r}) for n in ('mobilefacenet', 'dlib_resnet')]; "
            "print('onnx' in sys.modules, 'torch' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    assert [r.stdout.strip() for r in runs] == ["True True", "False False"]
    kept = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.onnx"))
    assert kept == ["centerface-free-sized", "dlib_resnet-torch-export", "mobilefacenet-free-batch",
                    "mtcnn_onet-torch-export", "mtcnn_pnet-torch-export", "mtcnn_rnet-torch-export",
                    "retinaface-torch-export", "scrfd-dynamic", "yunet-free-batch"]


def test_threads_loading_models_together_write_each_graph_once(tmp_path, monkeypatch, shared):
    """Threads may build their models at the same time (a library user's; the local engine builds one
    thread's at a time): torch's exporter keeps global state, so two exports at once fail unless `derived`
    makes them one at a time."""
    import threading

    from anonymizer import onnx_runtime
    from anonymizer.detect import build_detector
    from anonymizer.measure.encoder import build_encoder

    monkeypatch.setattr(onnx_runtime, "DERIVED_DIR", tmp_path)
    models, errors = str(shared / "models"), []

    def load(names: list[str]) -> None:
        try:
            for n in names:
                build_encoder(n, {}, models) if n == "dlib_resnet" else build_detector(n, {}, models)
        except Exception as exc:  # the assertion below names it
            errors.append(repr(exc))

    threads = [threading.Thread(target=load, args=(names,)) for names in
               (["retinaface", "mtcnn", "dlib_resnet"], ["mtcnn", "dlib_resnet", "retinaface"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(tmp_path.glob("*-torch-export-*.onnx"))) == 5
