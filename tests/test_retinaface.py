"""RetinaFace on real photos: the weights load into our network and find what YuNet finds, and tiling
finds faces too small for any whole-image pass."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import anonymizer.detect.retinaface as rf
from anonymizer.detect import build_detector
from anonymizer.faces import Face, iou

SHARED = Path(os.environ.get("ANONYMIZER_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
MODELS = SHARED / "models"
PHOTOS = SHARED / "data" / "photos"
LFW_FACE = SHARED / "data" / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"

pytestmark = pytest.mark.skipif(not (MODELS / "retinaface").is_dir(), reason=f"no weights under {MODELS}")


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector() -> rf.RetinaFaceDetector:
    return build_detector("retinaface", {"score_threshold": 0.5}, str(MODELS))


@pytest.fixture(scope="module")
def multiface() -> np.ndarray:
    return _rgb(PHOTOS / "multiface.jpg")


def test_registered_under_its_name(detector: rf.RetinaFaceDetector) -> None:
    assert isinstance(detector, rf.RetinaFaceDetector) and detector.name == "retinaface"


def test_priors_match_the_networks_output_layout(detector: rf.RetinaFaceDetector) -> None:
    loc, conf, ldm = detector._session.run(None, {"input": np.zeros((1, 3, 96, 160), np.float32)})
    assert loc.shape[1] == conf.shape[1] == ldm.shape[1] == len(rf.prior_boxes(96, 160))
    # 96x160 at stride 8: 12x20 cells, 2 anchors each, first anchor centred at (4, 4) with side 16
    assert rf.prior_boxes(96, 160)[0].tolist() == [4.0, 4.0, 16.0, 16.0]


def test_agrees_with_yunet_on_large_faces(detector: rf.RetinaFaceDetector, multiface: np.ndarray) -> None:
    yunet = build_detector("yunet", {}, str(MODELS)).detect(multiface)
    mine = detector.detect(multiface)
    large = [f for f in yunet if f.size >= 40]
    assert len(large) >= 3
    for y in large:
        best = max(mine, key=lambda f: iou(f, y))
        assert iou(best, y) >= 0.5, (y, best)
        assert best.detector == "retinaface" and best.landmarks.shape == (5, 2)


def test_landmarks_in_yunets_order(detector: rf.RetinaFaceDetector, multiface: np.ndarray) -> None:
    """Both list the eye on the image's left first; the anonymizers and auditors rely on one order."""
    yunet = [f for f in build_detector("yunet", {}, str(MODELS)).detect(multiface) if f.size >= 40]
    mine = detector.detect(multiface)
    for y in yunet:
        best = max(mine, key=lambda f: iou(f, y))
        error = np.linalg.norm(best.landmarks - y.landmarks, axis=1)
        assert error.max() < 0.15 * y.size, (y.landmarks, best.landmarks)
        assert best.landmarks[0, 0] < best.landmarks[1, 0]  # eye on the image's left first
        assert best.landmarks[3, 0] < best.landmarks[4, 0]  # mouth corner on the image's left first


def test_batched_and_single_agree(detector: rf.RetinaFaceDetector, multiface: np.ndarray) -> None:
    other = _rgb(sorted(PHOTOS.glob("group_*.jpg"))[0])
    small = cv2.resize(multiface, (multiface.shape[1] // 2, multiface.shape[0] // 2))
    images = [multiface, small, other]  # different sizes: the batch pads them to one
    batched = detector.detect_batch(images)
    for image, faces in zip(images, batched):
        single = detector.detect(image)
        confident = [f for f in single if f.score >= 0.8]
        assert confident
        for f in confident:
            best = max(faces, key=lambda g: iou(f, g), default=None)
            assert best is not None and iou(best, f) > 0.9 and abs(best.score - f.score) < 0.05


def _plant_small_face(canvas_wh: tuple[int, int], at: tuple[int, int], face_px: int, detector) -> tuple[np.ndarray, Face]:
    """A gray canvas with a real LFW face shrunk to ~face_px, and where that face now is."""
    lfw = _rgb(LFW_FACE)
    big = max(detector.detect(lfw), key=lambda f: f.score)  # the face's box in the 250x250 original
    factor = face_px / big.size
    patch = cv2.resize(lfw, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    canvas = np.full((canvas_wh[1], canvas_wh[0], 3), 118, np.uint8)
    x, y = at
    canvas[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    truth = Face(x + big.x * factor, y + big.y * factor, big.w * factor, big.h * factor, 1.0, "truth")
    return canvas, truth


def test_tiling_finds_a_ten_pixel_face_in_a_4k_frame() -> None:
    untiled = build_detector("retinaface", {"scales": [1.0]}, str(MODELS))
    tiled = build_detector("retinaface", {"scales": [2.0], "max_side": 8192, "tile": 1024, "tile_overlap": 96, "batch_size": 4}, str(MODELS))
    canvas, truth = _plant_small_face((3840, 2160), (2300, 1400), 11, untiled)
    assert 9 <= truth.size <= 13

    def found(faces: list[Face]) -> bool:
        return any(iou(f, truth) >= 0.4 for f in faces)

    tiled_faces = tiled.detect(canvas)
    assert found(tiled_faces), [f for f in tiled_faces if abs(f.x - truth.x) < 30]
    assert not found(untiled.detect(canvas))
    assert len(tiled_faces) <= 2  # a blank canvas gives no spurious faces


def test_tile_edges_cover_the_image() -> None:
    assert rf._tile_starts(1000, 1024, 128) == [0]
    starts = rf._tile_starts(3000, 1024, 128)
    assert starts[0] == 0 and starts[-1] == 3000 - 1024
    assert all(b - a <= 1024 - 128 for a, b in zip(starts, starts[1:]))


def test_loads_strictly() -> None:
    from anonymizer.detect.torch_nets import load

    net = load("retinaface", MODELS / "retinaface" / "mobilenet0.25_Final.pth")
    assert sum(p.numel() for p in net.parameters()) > 400_000


def test_onnx_graph_gives_the_torch_networks_outputs(multiface: np.ndarray) -> None:
    """What runs (onnxruntime) is what the weights define (torch), at a size other than the one traced."""
    import torch

    from anonymizer.detect.torch_nets import load

    x = np.ascontiguousarray((multiface[:480, :640, ::-1] - np.float32(rf.MEAN_BGR)).transpose(2, 0, 1)[None])
    det = build_detector("retinaface", {}, str(MODELS))
    with torch.inference_mode():
        expected = load("retinaface", det.model_path)(torch.from_numpy(x))
    for got, want in zip(det._session.run(None, {"input": x}), expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want.numpy(), atol=1e-3)


def test_per_scale_detections_are_what_detect_merges(multiface: np.ndarray) -> None:
    """detect_per_scale keeps each scale apart (for fusion); together they hold what detect returns."""
    det = build_detector("retinaface", {"score_threshold": 0.5, "scales": [1.0, 0.5]}, str(MODELS))
    per_scale = det.detect_per_scale(multiface)
    assert list(per_scale) == [1.0, 0.5]
    union = [f for faces in per_scale.values() for f in faces]
    for f in det.detect(multiface):
        assert max(iou(f, g) for g in union) > 0.99
    assert len(per_scale[1.0]) >= len(per_scale[0.5])  # the half-size pass misses small faces
