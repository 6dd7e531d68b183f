"""Auditor candidates and their measured strength: SCRFD finds the faces of a real photo at any input size,
its decoding is exact on hand-made outputs, the harness measures auditors on WIDER and photos, strength
entries are found by configuration, and the audit report prints the auditor's recall beside the
uncovered-faces check."""

from __future__ import annotations

import html
import json

import cv2
import numpy as np
import pytest

from anonymizer import report as reporting
from anonymizer.detect import build_detector
from anonymizer.detect import strength
from anonymizer.detect.scrfd import ANCHORS, STRIDES, decode
from anonymizer.eval import detection as ev
from anonymizer.faces import iou
from anonymizer.policy import parse_policy
from conftest import PHOTOS, SHARED

WIDER = SHARED / "data" / "widerface_val_subset"


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(PHOTOS / name)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def scrfd():
    return build_detector("scrfd", {"score_threshold": 0.5, "scales": [0.5, 1.0]})


def test_scrfd_finds_the_six_faces_of_a_real_photo(shared, scrfd):
    """multiface.jpg (1200x630, not the export's 640x640) holds six 80-90 px faces; YuNet finds the same six.
    Each scale on its own finds them too (the graph runs at any size), with landmarks inside the box."""
    image = _rgb("multiface.jpg")
    yunet = build_detector("yunet", {"score_threshold": 0.6}).detect(image)
    assert len(yunet) == 6
    per_scale = scrfd.detect_per_scale(image)
    for scale, faces in per_scale.items():
        assert len(faces) == 6, scale
        assert all(max(iou(f, y) for f in faces) > 0.5 for y in yunet), scale
        for f in faces:
            assert f.detector == "scrfd" and 0.5 <= f.score <= 1 and 60 < f.w < 130
            x, y = f.landmarks[:, 0], f.landmarks[:, 1]
            assert (x > f.x).all() and (x < f.x + f.w).all() and (y > f.y).all() and (y < f.y + f.h).all()
            assert x[0] < x[1] and x[3] < x[4]  # image-left eye and mouth corner first, as YuNet orders them
    assert len(scrfd.detect(image)) == 6  # the scales' union, duplicates suppressed


def test_scrfd_finds_nothing_in_flat_grey(scrfd):
    assert scrfd.detect(np.full((100, 150, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("name, params", [("mtcnn", {}), ("opencv_haar", {})])
def test_other_candidates_find_the_six_faces(shared, name, params):
    """MTCNN (facenet-pytorch weights, on onnxruntime) and OpenCV's Haar cascade on the same photo."""
    image = _rgb("multiface.jpg")
    yunet = build_detector("yunet", {"score_threshold": 0.6}).detect(image)
    faces = build_detector(name, params).detect(image)
    assert all(max(iou(f, y) for f in faces) > 0.5 for y in yunet)
    if name == "mtcnn":
        assert len(faces) == 6 and all(f.score > 0.9 and f.landmarks.shape == (5, 2) for f in faces)


def test_mtcnn_prelu_written_as_relu_and_min_is_prelu_bit_for_bit():
    """MTCNN's graphs write PReLU as relu(x) + a * min(x, 0) (faster on onnxruntime): the same values for
    slopes of either sign and above 1, as the weights have."""
    import torch

    from anonymizer.detect.torch_nets import _PReLU

    reference = torch.nn.PReLU(16)
    with torch.no_grad():
        reference.weight.copy_(torch.linspace(-1.3, 1.3, 16))
    split = _PReLU(16)
    split.load_state_dict(reference.state_dict())
    x = torch.randn(4, 16, 9, 9, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0.0
    assert torch.equal(split(x), reference(x))
    assert torch.equal(split(x[:, :, 0, 0]), reference(x[:, :, 0, 0]))  # after the dense layers: N x C


def test_nms_keeps_the_best_first_and_drops_overlaps_above_the_threshold():
    """Greedy NMS: equal scores in input order, IoU above the threshold dropped, a score of 0 still kept."""
    from anonymizer.detect.retinaface import nms_indices

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [5, 0, 15, 10]], np.float32)
    scores = np.array([0.9, 0.9, 0.0, 0.8], np.float32)  # box 1: IoU 0.82 with box 0; box 3: IoU 0.33
    assert nms_indices(boxes, scores, 0.5).tolist() == [0, 3, 2]
    assert nms_indices(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms_indices(boxes[:0], scores[:0], 0.5).tolist() == []


def test_decode_on_hand_made_outputs():
    """One anchor above the threshold: its centre is (column, row) x stride, the box and keypoints are
    distances from it in strides; anchors of one location are adjacent."""
    shape = (64, 96)
    outs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in STRIDES:
            outs.append(np.zeros((1, (shape[0] // s) * (shape[1] // s) * ANCHORS, width), np.float32))
    row, col, cols = 3, 5, shape[1] // 16
    i = (row * cols + col) * ANCHORS + 1  # stride 16, the location's second anchor
    outs[1][0, i, 0] = 0.9
    outs[4][0, i] = [1, 2, 3, 4]  # left, top, right, bottom in strides
    outs[7][0, i] = np.arange(10) / 10
    boxes, scores, points = decode(outs, shape, threshold=0.5)
    cx, cy = col * 16, row * 16
    assert scores.tolist() == pytest.approx([0.9])
    assert boxes[0].tolist() == pytest.approx([cx - 16, cy - 32, cx + 48, cy + 64])
    assert points[0, 1].tolist() == pytest.approx([cx + 0.2 * 16, cy + 0.3 * 16])


def test_strength_key_fills_defaults_and_tells_configurations_apart():
    a = strength.auditor_key("scrfd", {"score_threshold": 0.4})
    assert a == strength.auditor_key("scrfd", {"score_threshold": 0.4, "scales": [1], "nms_threshold": 0.4,
                                               "model_dir": "/elsewhere", "device": "cpu"})
    assert a != strength.auditor_key("scrfd", {"score_threshold": 0.41})
    assert strength.auditor_strength("no_such_detector", {}) is None


def test_strength_lookup_survives_a_parameter_added_at_its_default(tmp_path):
    """An entry measured before scrfd had `nms_threshold`: found while it stays at its default, not otherwise."""
    then = strength.full_params("scrfd", {"score_threshold": 0.4})
    del then["nms_threshold"]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"auditors": {json.dumps({"name": "scrfd", "params": then}): {"wider": "x"}}}))
    assert strength.auditor_strength("scrfd", {"score_threshold": 0.4}, path) == {"wider": "x"}
    assert strength.auditor_strength("scrfd", {"score_threshold": 0.4, "nms_threshold": 0.4}, path) is not None
    assert strength.auditor_strength("scrfd", {"score_threshold": 0.4, "nms_threshold": 0.5}, path) is None
    assert strength.auditor_strength("scrfd", {"score_threshold": 0.5}, path) is None


def test_packaged_strength_has_the_default_auditor():
    """The figures the report prints exist for the auditor policies/default.yaml names."""
    a = parse_policy("extends: default\nname: t\n").detection.auditor
    entry = strength.auditor_strength(a.name, a.params)
    assert entry is not None, f"no measured strength for {a.name} {a.params}: run anonymizer eval detection --auditors"
    assert entry["wider"]["images"] == 137 and set(entry["wider"]["recall"]) == {"<16", "16-32", ">=32"}
    assert entry["photos"]["images"] == 21 and "command" in entry


def test_harness_measures_an_auditor_and_writes_its_strength(shared, tmp_path):
    """Two WIDER images and one photo through `evaluate_auditors`: the cut is chosen at 2 FP/img, the photo is
    scored against the default policy's detectors, and the written entry is found again by its configuration."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "multiface.jpg").symlink_to(PHOTOS / "multiface.jpg")
    results = ev.evaluate_auditors(["scrfd"], WIDER, photos, limit=2, log=lambda _: None)
    row = results["scrfd"]
    samples = ev.select_samples(ev.load_ground_truth(WIDER), 2)
    assert row["wider"]["images"] == 2 and row["wider"]["fp_per_image"] <= ev.MATCHED_FP_RATE
    assert sum(row["wider"]["faces"].values()) == sum(1 for s in samples for f in s.faces if not f.invalid)
    assert row["params"]["score_threshold"] >= ev.AUDITOR_CANDIDATES["scrfd"]["params"]["score_threshold"]
    p = row["photos"]
    assert p["images"] == 1 and p["reference"] == "policy:default" and p["reference_faces"] >= 6
    assert p["recall_by_size"][">=32"] >= 0.8 and p["recall"] > 0
    path = tmp_path / "strength.json"
    ev.write_strength(results, path, "test")
    entry = strength.auditor_strength("scrfd", {"score_threshold": row["params"]["score_threshold"]}, path)
    assert entry is not None and entry["wider"] == json.loads(json.dumps(row["wider"]))
    assert "auditor scrfd finds" in strength.summary("scrfd", entry)


def test_report_prints_the_auditor_recall_beside_the_uncovered_faces_check():
    """The default policy's auditor: its measured recall by size in the uncovered_faces row and below the table."""
    p = parse_policy("extends: default\nname: t\n")
    check = {"name": "uncovered_faces", "success": True, "threshold": "<= 0", "observed": 0, "evidence": {},
             "protects": "faces the auditor finds are anonymized", "expectation": "x"}
    report = {"run_id": "r", "released": True, "verdict": {"reason": "all checks passed", "checks": [check]},
              "models": [], "policy": {"name": p.name, "sha256": p.sha256, "text": p.text}}
    page = reporting.render_html(report, {})
    entry = strength.auditor_strength(p.detection.auditor.name, p.detection.auditor.params)
    ge32 = f"{100 * entry['wider']['recall']['>=32']:.0f}% of faces >=32 px"
    mid = f"{100 * entry['wider']['recall']['16-32']:.0f}% 16-32 px"
    page = html.unescape(page)
    row = page[page.index("<td>uncovered_faces</td>"):].split("</tr>")[0]
    assert f"auditor {p.detection.auditor.name} finds {ge32}, {mid}" in row and "on the WIDER val subset (137 images" in row
    assert 'id="auditor-strength"' in page and ge32 in page[page.index('id="auditor-strength"'):]
    # an auditor configuration nobody measured says so
    report["auditor"] = reporting.auditor_record("scrfd", {"score_threshold": 0.123})
    assert "never measured" in reporting.render_html(report, {})
