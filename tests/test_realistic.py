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


def _policy(tmp_path, bank_path, profile: str = "realistic") -> str:
    p = tmp_path / f"{profile}-test.yaml"
    p.write_text(f"extends: {profile}\nname: {profile}-test\n"
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
    # the four bank people leave gaps in skin tone: a face in one is blurred, not given another skin
    assert methods.count("bank") >= 2 and set(methods) <= {"bank", "fallback:blur:skin_tone"}, methods
    report = json.loads((tmp_path / "rel.staging" / "r" / "report.json").read_text())
    rows = [m for m in report["models"] if m["component"] == "bank" and m["name"] == "face bank"]
    assert rows and rows[0]["licence"] == "non-commercial (StyleGAN2-FFHQ)" and len(rows[0]["sha256"]) == 64
    probe = [m for m in report["models"] if m["component"] == "apparent_sex" and m["name"] == "apparent_sex"]
    assert probe and probe[0]["licence_class"] == "research" and len(probe[0]["sha256"]) == 64
    assert outcome.report["policy"]["name"] == "realistic-test"


def test_a_missing_bank_is_refused_before_any_image(tmp_path):
    code = main(["run", str(PHOTOS), str(tmp_path / "rel"), "--engine", "local",
                 "--policy", _policy(tmp_path, tmp_path / "no-such-bank")])
    assert code == 2
    assert not (tmp_path / "rel.staging").exists() or not any((tmp_path / "rel.staging").rglob("outputs/*"))


@pytest.fixture(scope="module")
def permissive_bank(tmp_path_factory, shared):
    """A composite bank built with the face mesh from 16 LFW people, declared permissive: it stands in for a
    bank from a user's own faces (LFW itself is a research data set)."""
    pytest.importorskip("ai_edge_litert", reason="pip install 'anonymizer[mesh]': no TFLite runtime for the face mesh")
    from conftest import LFW

    rows = [line.split("\t") for line in (LFW.parent / "identities.tsv").read_text().splitlines()[1:]]
    folder = tmp_path_factory.mktemp("own_faces")
    for name in sorted(r[0] for r in rows if int(r[1]) >= 3)[::7][:16]:
        (folder / name).mkdir()
        for f in sorted((LFW / name).glob("*.jpg"))[:3]:
            (folder / name / f.name).symlink_to(f)
    out = tmp_path_factory.mktemp("bank") / "own"
    assert main(["bank", "build", str(folder), "--out", str(out), "--n", "2", "--landmarks", "mediapipe_mesh",
                 "--licence", "stand-in for the user's own faces", "--licence-class", "permissive"]) == 0
    return out


def test_realistic_permissive_runs_on_permissive_parts_only(permissive_bank, tmp_path):
    """With a bank built by the face mesh from faces the user may use, every model and the bank in the
    report are permissive: no dlib 68-point model, no MobileFaceNet, no SCRFD."""
    from anonymizer.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PHOTOS / "group_2.jpg", src / "group_2.jpg")
    run_pipeline(str(src), str(tmp_path / "rel"), policy=_policy(tmp_path, permissive_bank, "realistic_permissive"),
                 engine="local", run_id="r")
    faces = pd.read_parquet(tmp_path / "rel.staging" / "r" / "metrics" / "faces.parquet")
    assert faces[faces["source"] == "primary"]["method"].tolist().count("bank") >= 3
    report = json.loads((tmp_path / "rel.staging" / "r" / "report.json").read_text())
    assert {m["licence_class"] for m in report["models"]} == {"permissive"}
    names = {m["name"] for m in report["models"]}
    assert "mediapipe_mesh" in names and not names & {"dlib_shape68", "mobilefacenet", "scrfd"}


def test_realistic_permissive_refuses_a_bank_of_restricted_parts(stylegan_bank, tmp_path, capsys):
    """A StyleGAN bank (non-commercial, built with dlib's research-only points) is refused by the licence
    gate, naming it, before any image."""
    code = main(["run", str(PHOTOS), str(tmp_path / "rel"), "--engine", "local",
                 "--policy", _policy(tmp_path, stylegan_bank, "realistic_permissive")])
    assert code == 2
    err = capsys.readouterr().err
    assert "licence gate" in err and "'face bank'" in err and "'dlib_shape68'" in err, err
    assert not (tmp_path / "rel.staging").exists() or not any((tmp_path / "rel.staging").rglob("outputs/*"))
