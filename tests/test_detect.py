import numpy as np
from PIL import Image

from anonymizer.detect import build_detector
from conftest import PHOTOS, lfw_images


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_yunet_finds_the_face_in_lfw_portraits(shared):
    det = build_detector("yunet", {"scales": [1.0]})
    paths = lfw_images(12)
    hits = 0
    for p in paths:
        faces = [f for f in det.detect(_rgb(p)) if f.size > 50]
        centre = [f for f in faces if abs(f.x + f.w / 2 - 125) < 30 and abs(f.y + f.h / 2 - 125) < 40]
        hits += bool(centre)
        for f in centre:  # landmarks lie inside (or at the edge of) their box
            assert f.landmarks.shape == (5, 2)
            assert ((f.landmarks[:, 0] > f.x - 5) & (f.landmarks[:, 0] < f.x + f.w + 5)).all()
    assert hits >= 11, f"YuNet found the centred face in only {hits}/12 LFW images"


def test_multiscale_finds_faces_that_one_scale_misses(shared):
    img = _rgb(PHOTOS / "group_25.jpg")  # a crowd of small faces
    one = build_detector("yunet", {"scales": [1.0]}).detect(img)
    multi = build_detector("yunet", {"scales": [1.0, 2.0, 3.0]}).detect(img)
    assert len(multi) > len(one) * 1.1, (len(one), len(multi))


def test_max_side_bounds_upscaling():
    det = build_detector("yunet", {"scales": [1.0, 4.0], "max_side": 1000})
    img = np.zeros((600, 800, 3), np.uint8)
    assert det.detect(img) == []  # runs (at 1× only: 4× would exceed max_side) and finds nothing in black


def test_tiny_images_give_no_garbage_detections():
    from anonymizer.detect import Ensemble

    det = Ensemble([build_detector("yunet", {"scales": [1.0, 2.0, 3.0]})], 0.3)
    rng = np.random.default_rng(1)
    for _ in range(10):  # below YuNet's stride its raw output is uninitialised memory
        img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        assert all(np.isfinite([f.x, f.y, f.w, f.h]).all() and f.w > 0 for f in det.detect(img))


def test_dlib_auditor_agrees_on_a_clear_portrait(shared):
    hog = build_detector("dlib_hog", {"upsample": 1, "min_score": 0.2})
    found = sum(bool(hog.detect(_rgb(p))) for p in lfw_images(8))
    assert found >= 7
