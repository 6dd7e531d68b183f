"""An independent second recognizer in the gate: every face is scored by both, and the re-identification
bound must hold for each at its own calibrated distance."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import PHOTOS

SECOND = """extends: default
name: {name}
accept_licences: [non-commercial]
measurement:
  second_encoder: {{name: mobilefacenet, same_person_distance: 1.1503}}
anonymization:
  operator: {{name: blur, params: {{strength: {strength}}}}}
"""


@pytest.fixture(scope="module")
def source(shared, tmp_path_factory):
    src = tmp_path_factory.mktemp("second") / "src"
    src.mkdir()
    shutil.copy(PHOTOS / "group_2.jpg", src / "group_2.jpg")
    return src


def _run(source, tmp_path, name: str, strength: float):
    from anonymizer.pipeline import run_pipeline

    policy = tmp_path / f"{name}.yaml"
    policy.write_text(SECOND.format(name=name, strength=strength))
    outcome = run_pipeline(str(source), str(tmp_path / "rel"), policy=str(policy), engine="local", run_id="r")
    faces = pd.read_parquet(tmp_path / "rel.staging" / "r" / "metrics" / "faces.parquet")
    return outcome, faces[faces["source"] == "primary"]


def test_both_recognizers_score_every_scorable_face(source, tmp_path):
    outcome, faces = _run(source, tmp_path, "second", 0.35)
    scored = faces[faces["size"] >= 32]
    assert len(scored) >= 3
    assert scored["reid_distance"].notna().all() and scored["reid_distance_second"].notna().all()
    checks = {c.name: c for c in outcome.verdict.checks}
    assert checks["naive_reidentification_second"].success, outcome.verdict.reason
    assert outcome.released
    assert any(m["name"] == "mobilefacenet" for m in outcome.report["models"])


def test_a_weak_operator_fails_the_second_recognizers_bound(source, tmp_path):
    outcome, faces = _run(source, tmp_path, "weak", 0.01)
    checks = {c.name: c for c in outcome.verdict.checks}
    assert not checks["naive_reidentification_second"].success
    assert not outcome.released
    assert (faces["reid_distance_second"].dropna() < 1.1503).mean() > 0.5
