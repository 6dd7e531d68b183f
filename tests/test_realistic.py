"""The realistic profile end to end: a face bank built by the CLI, faces replaced from it through the
pipeline, the bank and its licence in the audit report, and a missing bank refused before any image."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import PHOTOS

from anonymizer.cli import main


@pytest.fixture(scope="module")
def bank(stylegan_bank):
    return stylegan_bank


def _policy(tmp_path, bank_path) -> str:
    p = tmp_path / "realistic-test.yaml"
    p.write_text(f"extends: realistic\nname: realistic-test\n"
                 f"anonymization: {{operator: {{name: bank, params: {{bank: '{bank_path}'}}}}}}\n")
    return str(p)


def test_realistic_profile_replaces_faces_from_the_bank(bank, tmp_path):
    from anonymizer.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PHOTOS / "group_2.jpg", src / "group_2.jpg")
    outcome = run_pipeline(str(src), str(tmp_path / "rel"), policy=_policy(tmp_path, bank), engine="local",
                           run_id="r")
    faces = pd.read_parquet(tmp_path / "rel.staging" / "r" / "metrics" / "faces.parquet")
    methods = faces[faces["source"] == "primary"]["method"].tolist()
    assert methods.count("bank") >= 3, methods
    report = json.loads((tmp_path / "rel.staging" / "r" / "report.json").read_text())
    rows = [m for m in report["models"] if m["component"] == "bank" and m["name"] == "face bank"]
    assert rows and rows[0]["licence"] == "non-commercial (StyleGAN2-FFHQ)" and len(rows[0]["sha256"]) == 64
    assert outcome.report["policy"]["name"] == "realistic-test"


def test_a_missing_bank_is_refused_before_any_image(tmp_path):
    code = main(["run", str(PHOTOS), str(tmp_path / "rel"), "--engine", "local",
                 "--policy", _policy(tmp_path, tmp_path / "no-such-bank")])
    assert code == 2
    assert not (tmp_path / "rel.staging").exists() or not any((tmp_path / "rel.staging").rglob("outputs/*"))
