"""The detection harness: exact numbers on a hand-made case, and a real run on a few WIDER images."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from anonymizer.eval import detection as ev
from anonymizer.faces import Face

SHARED = Path(os.environ.get("ANONYMIZER_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
WIDER = SHARED / "data" / "widerface_val_subset"
MODELS = SHARED / "models"

GT_TEXT = """# synthetic: x y w h invalid occlusion pose blur in_hard_eval_set
# images/a.jpg 416 416 (stretched from 832x416, sx=0.5 sy=1.0)
10 10 40 40 0 0 0 0 1
100 100 10 10 0 0 0 0 1
200 200 20 20 1 0 0 0 0
# images/b.jpg 416 416
50 50 64 64 0 0 0 0 1
"""


class FakeDetector:
    """Answers by image size, in the aspect-restored frame the harness hands it."""

    name = "fake"

    def detect(self, image: np.ndarray) -> list[Face]:
        if image.shape[:2] == (416, 832):  # a.jpg restored: x doubled
            return [
                Face(20, 10, 80, 40, 0.9, "fake"),  # finds the 40 px face
                Face(600, 300, 40, 40, 0.8, "fake"),  # nothing there: false positive
                Face(400, 200, 40, 20, 0.7, "fake"),  # the invalid face: ignored
                Face(22, 10, 80, 40, 0.6, "fake"),  # duplicate of the first: false positive
            ]
        return [Face(50, 50, 64, 64, 0.95, "fake")]


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / "images" / name), np.full((416, 416, 3), 120, np.uint8))
    (tmp_path / "boxes_416.txt").write_text(GT_TEXT)
    return tmp_path


def test_parses_original_size_from_the_stretch_note(synthetic: Path) -> None:
    a, b = ev.load_ground_truth(synthetic)
    assert (a.original_w, a.original_h, b.original_w, b.original_h) == (832, 416, 416, 416)
    assert [f.invalid for f in a.faces] == [False, False, True]
    assert a.faces[0].original_size == pytest.approx(np.sqrt(80 * 40))


def test_synthetic_case_scores_exactly(synthetic: Path) -> None:
    r = ev.evaluate(FakeDetector(), synthetic)
    assert r["faces"] == 3 and r["images"] == 2
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["true_positives"] == 2 and r["false_positives"] == 2
    assert r["fp_per_image"] == pytest.approx(1.0)
    assert r["ap"] == pytest.approx(2 / 3)  # precision 1 up to recall 2/3, never more recall
    assert r["by_size"][">=32"] == {"faces": 2, "recall": 1.0}
    assert r["by_size"]["8-16"] == {"faces": 1, "recall": 0.0}
    assert r["by_size"]["<8"] == {"faces": 0, "recall": None}
    assert r["wider"]["hard"]["recall"] == pytest.approx(2 / 3)
    assert r["wider"]["easy"]["faces"] == 2  # the 10 px face (20x10 originally) is not "easy"


def test_average_precision_all_point() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1, 0, 1, -1])
    # precision 1 at recall 1/4, then 2/3 at recall 2/4 (the ignored one counts for nothing)
    assert ev.average_precision(scores, labels, 4) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)
    assert ev.average_precision(np.array([]), np.array([], int), 3) == 0.0


def test_detections_map_back_to_the_416_frame() -> None:
    face = Face(100, 50, 20, 10, 1.0, "x", np.array([[100, 50]] * 5, np.float32))
    (back,) = ev.to_eval_frame([face], (832, 208))
    assert (back.x, back.y, back.w, back.h) == (50, 100, 10, 20)
    assert back.landmarks[0].tolist() == [50, 100]


@pytest.mark.skipif(not WIDER.is_dir(), reason=f"no {WIDER}")
def test_real_wider_images_through_the_cli_hook(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(
        ["--data", str(WIDER), "--out", str(tmp_path), "--detectors", "yunet", "--limit", "5", "--model-dir", str(MODELS)]
    )
    assert ev.run(args) == 0
    result = json.loads((tmp_path / "detection_eval.json").read_text())["results"]["yunet"]
    assert result["images"] == 5 and result["faces"] > 20
    assert 0.2 < result["recall"] <= 1.0 and result["by_size"][">=32"]["recall"] >= 0.6
    assert (tmp_path / "detection_eval.png").stat().st_size > 10_000


@pytest.mark.skipif(not WIDER.is_dir(), reason=f"no {WIDER}")
def test_retinaface_on_real_wider_images() -> None:
    import anonymizer.detect.retinaface  # noqa: F401  (registration)
    from anonymizer.detect import build_detector

    detector = build_detector("retinaface", {"scales": [1.0]}, str(MODELS))
    r = ev.evaluate(detector, WIDER, limit=5)
    assert r["faces"] > 20 and r["recall"] > 0.2 and r["fp_per_image"] < 5
    assert r["ms_per_image"] > 0
