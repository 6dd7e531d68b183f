"""MobileFaceNet as a second face encoder (real weights on real LFW photos), the LFW identity splits that
calibrate and evaluate it, and the calibration's statistics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anonymizer import models
from anonymizer.eval import calibrate
from anonymizer.eval.lfw import split_of
from anonymizer.faces import Face
from conftest import LFW, PHOTOS


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector():
    from anonymizer.detect import build_detector

    return build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]})


@pytest.fixture(scope="module")
def encoder():
    from anonymizer.measure.encoder import build_encoder

    return build_encoder("mobilefacenet", {})


def test_model_entry_is_pinned_and_marked_non_commercial(shared):
    spec = models.MODELS["mobilefacenet"]
    assert models.describe("mobilefacenet", shared / "models")["sha256"] == spec.sha256
    assert spec.licence_class == "non-commercial" and "MS-Celeb-1M" in spec.licence
    assert models.MODELS["yunet"].licence_class == "permissive"
    with pytest.raises(ValueError, match="licence_class"):
        models.ModelSpec("x", "x.onnx", None, None, "?", licence_class="free-ish")


def test_separates_same_and_different_lfw_people(detector, encoder):
    """20 LFW identities x 3 images, every pair: AUC >= 0.99 (genuine distances below impostor ones)."""
    rows = [line.split("\t") for line in (LFW.parent / "identities.tsv").read_text().splitlines()[1:]]
    names = sorted(n for n, c in rows if int(c) >= 3)[::31][:20]
    ids, embs = [], []
    for name in names:
        for f in sorted((LFW / name).glob("*.jpg"))[:3]:
            rgb = _rgb(f)
            face = calibrate.central_face(detector.detect(rgb), rgb.shape[:2])
            assert face is not None, f
            embs.append(encoder.embed(rgb, encoder.align(rgb, [face]))[0])
            ids.append(name)
    emb = np.stack(embs)
    assert emb.shape == (60, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    pairs = calibrate.Pairs.of(emb, ids)
    assert pairs.same.sum() == 60
    assert calibrate.auc(pairs.genuine, pairs.impostor) >= 0.99
    # d = sqrt(2 - 2 cos) on unit vectors; the default threshold sits between the two medians
    assert np.median(pairs.genuine) < encoder.same_person_distance < np.median(pairs.impostor)


def test_batched_embed_equals_one_by_one(detector, encoder):
    rgb = _rgb(sorted(PHOTOS.glob("*.jpg"))[0])
    faces = [f for f in detector.detect(rgb) if f.w >= 24][:8]
    assert len(faces) >= 3
    alignments = encoder.align(rgb, faces)
    together = encoder.embed(rgb, alignments)
    one_by_one = np.stack([encoder.embed(rgb, [a])[0] for a in alignments])
    assert together.shape == (len(faces), 128)
    assert np.allclose(together, one_by_one, atol=1e-5)
    assert encoder.embed(rgb, []).shape == (0, 128)


def test_faces_without_landmarks_align_by_dlibs_five_points(detector, encoder):
    """The fallback aligner (shared with the `onnx` encoder) lands on the same person as the detector's landmarks."""
    rgb = _rgb(sorted((LFW / "Tony_Blair").glob("*.jpg"))[0])
    face = calibrate.central_face(detector.detect(rgb), rgb.shape[:2])
    bare = Face(face.x, face.y, face.w, face.h, face.score, face.detector, None)
    a, b = encoder.embed(rgb, encoder.align(rgb, [face, bare]))
    assert np.linalg.norm(a - b) < encoder.same_person_distance


def test_missing_or_broken_model_file_is_named(tmp_path, monkeypatch):
    from anonymizer.measure.mobilefacenet import MobileFaceNetEncoder

    monkeypatch.setenv(models.MODEL_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(models, "USER_MODEL_DIR", tmp_path / "user")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.ModelNotFoundError) as err:
        MobileFaceNetEncoder(model_dir=str(tmp_path / "configured"))
    assert str(tmp_path / "configured" / "mobilefacenet" / "MobileFaceNet.onnx") in str(err.value)
    broken = tmp_path / "configured" / "mobilefacenet" / "MobileFaceNet.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a network")
    with pytest.raises(ValueError, match=f"cannot load {broken}"):
        MobileFaceNetEncoder(model_dir=str(tmp_path / "configured"))


# --- identity splits ----------------------------------------------------------------------------------


def test_calibration_and_evaluation_identities_are_disjoint():
    names = sorted(p.name for p in LFW.iterdir() if p.is_dir())
    split = {n: split_of(n) for n in names}
    cal = {n for n, s in split.items() if s == "calibration"}
    ev = {n for n, s in split.items() if s == "eval"}
    train = {n for n, s in split.items() if s == "train"}
    assert cal and ev and not (cal & ev) and not (cal & train) and not (ev & train)
    assert len(cal) + len(ev) + len(train) == len(names)
    assert 0.07 < len(cal) / len(names) < 0.13 and 0.07 < len(ev) / len(names) < 0.13
    # the evaluation identities are those the generator's model card records as held out
    import hashlib

    assert hashlib.sha256("\n".join(sorted(ev)).encode()).hexdigest() == (
        "be03d28a2b650ca449a4bd61b6f30c5b8b7c3bd349aa337adb144e0f11e79d7f")
    lfw = LFW.parent
    cal_items = {i for i, _ in calibrate.select(lfw, "calibration", 2)}
    ev_items = {i for i, _ in calibrate.select(lfw, "eval", 2)}
    assert cal_items <= cal and ev_items <= ev and not (cal_items & ev_items)


# --- calibration statistics ---------------------------------------------------------------------------


def test_auc_and_identity_bootstrap_on_known_scores():
    assert calibrate.auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert calibrate.auc(np.array([0.3]), np.array([0.3])) == 0.5
    assert calibrate.auc(np.array([0.5, 0.1]), np.array([0.3, 0.4])) == 0.5
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 16))
    ids = np.repeat([f"p{i}" for i in range(60)], 3)
    emb = centres[np.repeat(np.arange(60), 3)] + rng.normal(scale=0.4, size=(180, 16))
    cal, ev = calibrate.Pairs.of(emb[:90], ids[:90]), calibrate.Pairs.of(emb[90:], ids[90:])
    r = calibrate.calibrate_encoder(cal, ev, (1e-2,), reps=100, seed=1)["by_far"]["0.01"]
    assert (cal.impostor < r["threshold"]).mean() <= 1e-2
    lo, hi = r["threshold_ci95"]
    assert lo <= r["threshold"] <= hi and lo < hi
    assert r["tar_ci95"][0] <= r["tar"] <= r["tar_ci95"][1]


def test_calibrate_cli_on_a_few_identities(tmp_path):
    """The command end to end on 6 identities per split: thresholds, evaluation TAR and a size sweep."""
    import argparse

    p = argparse.ArgumentParser()
    calibrate.add_arguments(p)
    args = p.parse_args(["--lfw", str(LFW.parent), "--out", str(tmp_path), "--encoders", "mobilefacenet",
                         "--max-identities", "12", "--sizes", "24", "--bootstrap", "20"])
    assert calibrate.run(args) == 0
    import json

    result = json.loads((tmp_path / "calibration.json").read_text())
    r = result["encoders"]["mobilefacenet"]
    assert set(r["by_far"]) == {"0.001", "0.0001"} and set(r["by_size"]) == {"24", "full"}
    assert r["calibration"]["identities"] == 12 and r["evaluation"]["identities"] == 12
    assert 0 < r["by_far"]["0.001"]["threshold"] < 2 and 0 <= r["by_size"]["24"]["tar"] <= 1
