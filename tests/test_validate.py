"""The release gate, on metrics tables built here: each threshold, when violated, fails its own check."""

import pandas as pd
import pytest

from anonymizer.validate import validate


def tables(**overrides):
    images = pd.DataFrame({
        "key": ["a.jpg", "b.jpg", "c.jpg"], "error": [None, None, None],
        "metadata_fields_left": [0, 0, 0], "outside_changed_fraction": [0.0, 0.001, 0.0],
        "uncovered_faces": [0, 0, 0],
    })
    faces = pd.DataFrame({
        "key": ["a.jpg"] * 10, "source": ["primary"] * 9 + ["auditor"],
        "reid_distance": [0.8] * 9 + [None],
    })
    for column, (table, values) in overrides.items():
        (images if table == "images" else faces)[column] = values
    return images, faces


def test_clean_tables_pass(policy):
    v = validate(policy, *tables())
    assert v.passed, v.reason
    assert {c.name for c in v.checks} == {"images_processed", "failed_images", "metadata_left", "outside_changed",
                                          "uncovered_faces", "naive_reidentification"}


@pytest.mark.parametrize("check,override", [
    ("failed_images", {"error": ("images", [None, "corrupt", None])}),
    ("metadata_left", {"metadata_fields_left": ("images", [0, 2, 0])}),
    ("outside_changed", {"outside_changed_fraction": ("images", [0.0, 0.2, 0.0])}),
    ("uncovered_faces", {"uncovered_faces": ("images", [0, 1, 0])}),
    ("naive_reidentification", {"reid_distance": ("faces", [0.8] * 8 + [0.3, None])}),
])
def test_each_violated_threshold_fails_its_check(policy, check, override):
    v = validate(policy, *tables(**override))
    assert not v.passed
    assert [c.name for c in v.failed] == [check]
    assert check in v.reason


def test_reid_rate_within_policy_passes(policy):
    # 1 of 12 scored faces (8%) under the 9% of the default policy
    images, _ = tables()
    faces = pd.DataFrame({"key": "a.jpg", "source": "primary", "reid_distance": [0.8] * 11 + [0.5]})
    assert validate(policy, images, faces).passed


def test_missing_metric_fails_closed(policy):
    images, faces = tables()
    v = validate(policy, images.drop(columns=["uncovered_faces"]), faces)
    assert not v.passed and v.error and "uncovered_faces" in v.reason


def test_empty_run_fails(policy):
    images, faces = tables()
    v = validate(policy, images.iloc[:0], faces.iloc[:0])
    assert not v.passed and [c.name for c in v.failed] == ["images_processed"]


def test_pose_threshold_gates_only_when_set(policy):
    images, faces = tables()
    faces["pose_error"] = [2.0] * 5 + [30.0] * 4 + [None]
    assert validate(policy, images, faces).passed  # the default policy measures pose but does not gate it
    strict = policy.model_copy(update={"thresholds": policy.thresholds.model_copy(update={"max_median_pose_error_deg": 5.0})})
    v = validate(strict, images, faces)
    assert v.passed and "pose_kept" in {c.name for c in v.checks}  # median 2.0
    faces["pose_error"] = [2.0] * 4 + [30.0] * 5 + [None]
    v = validate(strict, images, faces)
    assert [c.name for c in v.failed] == ["pose_kept"]


def test_redetection_threshold_fails_when_faces_are_not_found_again(policy):
    images, faces = tables()
    faces["redetected"] = [True] * 7 + [False] * 2 + [None]  # 7/9 found again; the auditor row has no value
    gated = policy.model_copy(update={"thresholds": policy.thresholds.model_copy(update={"min_redetected_fraction": 0.75})})
    assert validate(gated, images, faces).passed
    faces["redetected"] = [True] * 5 + [False] * 4 + [None]
    assert [c.name for c in validate(gated, images, faces).failed] == ["still_a_face"]
