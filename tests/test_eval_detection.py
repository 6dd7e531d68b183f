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


def _sample(name: str, faces: list[tuple[float, float, float, float, bool]]) -> ev.Sample:
    return ev.Sample(name, Path(name), EVAL, EVAL, [ev.GtFace((x, y, w, h), inv, True, w) for x, y, w, h, inv in faces])


EVAL = ev.EVAL_SIDE


def test_recall_at_matched_false_positive_rate() -> None:
    """Cut on the detector's own score ranking where FP/img reaches the rate; recall by size at that cut."""
    a = _sample("a", [(10, 10, 40, 40, False), (100, 100, 10, 10, False), (200, 200, 20, 20, True)])
    b = _sample("b", [(50, 50, 20, 20, False)])
    dets_a = [
        Face(10, 10, 40, 40, 0.9, "d"),  # TP (40 px)
        Face(300, 300, 30, 30, 0.8, "d"),  # FP 1
        Face(100, 100, 10, 10, 0.7, "d"),  # TP (10 px)
        Face(200, 200, 20, 20, 0.65, "d"),  # on the invalid face: ignored, never an FP
        Face(10, 10, 40, 40, 0.5, "d"),  # duplicate: FP 3
    ]
    dets_b = [
        Face(300, 10, 30, 30, 0.6, "d"),  # FP 2
        Face(50, 50, 20, 20, 0.4, "d"),  # TP (20 px), below the cut
    ]
    r = ev.recall_at_fp_rate([a, b], [dets_a, dets_b], fp_per_image=1.0)  # budget: 2 FP in 2 images
    assert r["threshold"] == pytest.approx(0.6) and r["reached"]
    assert r["fp_per_image"] == pytest.approx(1.0) and r["detections"] == 5
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["by_size"][">=32"]["recall"] == 1.0 and r["by_size"]["8-16"]["recall"] == 1.0
    assert r["by_size"]["16-32"] == {"faces": 1, "recall": 0.0}
    # a generous rate keeps everything: all faces found, rate not reached
    r = ev.recall_at_fp_rate([a, b], [dets_a, dets_b], fp_per_image=5.0)
    assert r["recall"] == 1.0 and not r["reached"] and r["threshold"] == pytest.approx(0.4)
    # ties: two detections share a score and together overshoot, so the cut falls above both
    tied = [Face(10, 10, 40, 40, 0.9, "d"), Face(100, 100, 10, 10, 0.7, "d"), Face(300, 300, 30, 30, 0.7, "d")]
    r = ev.recall_at_fp_rate([a], [tied], fp_per_image=0.5)
    assert r["threshold"] == pytest.approx(0.9) and r["recall"] == pytest.approx(0.5)
    # the harness's own score() at that threshold agrees with the cut
    cut = [[f for f in dets_a if f.score >= 0.6], [f for f in dets_b if f.score >= 0.6]]
    full = ev.score([a, b], cut, curve=False)
    m = ev.recall_at_fp_rate([a, b], [dets_a, dets_b], fp_per_image=1.0)
    assert full["recall"] == pytest.approx(m["recall"]) and full["fp_per_image"] == pytest.approx(m["fp_per_image"])


def test_recommended_settings_are_the_default_policys() -> None:
    """The harness's 'ensemble' without a policy is what policies/default.yaml deploys."""
    from anonymizer.policy import load_policy

    d = load_policy().detection
    assert {c.name: dict(c.params) for c in d.detectors} == ev.RECOMMENDED_PARAMS
    m = ev.RECOMMENDED_MERGE
    assert (d.merge, d.merge_iou, d.min_score, d.vote_per_scale) == (m["merge"], m["merge_iou"], m["min_score"], m["vote_per_scale"])
    assert {c.name: c.weight for c in d.detectors} == m["weights"]
    assert ev.merge_settings(None) == m


@pytest.mark.skipif(not WIDER.is_dir(), reason=f"no {WIDER}")
def test_policy_detection_on_real_wider_images_reports_the_matched_rate(tmp_path: Path) -> None:
    """`--detectors policy` runs the default policy's fused detection; the table has the matched-FP rows."""
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(["--data", str(WIDER), "--out", str(tmp_path), "--detectors", "policy", "--limit", "4",
                              "--model-dir", str(MODELS)])
    assert ev.run(args) == 0
    r = json.loads((tmp_path / "detection_eval.json").read_text())["results"]["policy"]
    assert r["faces"] > 20 and r["recall"] > 0.3
    m = r["matched_fp"]
    assert m["fp_rate"] == 2.0 and m["fp_per_image"] <= 2.0 and 0 < m["recall"] <= r["recall"]
    assert set(m["by_size"]) == {b[0] for b in ev.SIZE_BUCKETS}
    assert "Recall at a matched false-positive rate" in ev.markdown_table({"policy": r})
