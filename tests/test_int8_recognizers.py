"""The 8-bit copies of the identity guard's recognizers (dlib's ResNet and MobileFaceNet, anonymizer.int8),
on real LFW faces: made from the committed ranges on first use, they keep the distances between faces the
guard compares, and the audit report says where a run uses them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anonymizer import int8, onnx_runtime
from anonymizer.eval import calibrate
from conftest import LFW

pytestmark = pytest.mark.skipif(not int8.available(), reason="this onnxruntime's quantizer takes no stored ranges")


@pytest.fixture(scope="module")
def faces():
    from anonymizer.detect import build_detector

    yunet = build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]})
    out = []
    for path in sorted(LFW.glob("*/*.jpg"))[::97][:24]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        face = calibrate.central_face(yunet.detect(rgb), rgb.shape[:2])
        if face is not None:
            out.append((rgb, face))
    assert len(out) >= 20
    return out


@pytest.mark.skipif(not int8.dot_products(), reason="this CPU has no 8-bit dot products: its int8 kernels can "
                    "saturate, so `auto` runs float32 (test_auto_keeps_float32_where_int8_kernels_can_saturate)")
@pytest.mark.parametrize("name, tolerance", [("dlib_resnet", 0.08), ("mobilefacenet", 0.07)])
def test_int8_copy_keeps_the_distances_between_faces(faces, name, tolerance, tmp_path, monkeypatch):
    """Every pairwise distance within `tolerance` of float32's (measured: p99 0.03, largest 0.08 and 0.05
    over 150 faces; the guard keeps a margin of 0.05 above each recognizer's same-person distance, and the
    release gate measures in float32), and `auto` is int8 on this CPU."""
    from anonymizer.measure.encoder import build_encoder

    monkeypatch.setattr(onnx_runtime, "DERIVED_DIR", tmp_path / "derived")
    e32 = build_encoder(name, {"device": "cpu"})
    e8 = build_encoder(name, {"device": "cpu", "precision": "auto"})
    assert (e32.precision, e8.precision) == ("float32", "int8")
    assert len(list((tmp_path / "derived").glob(f"{name}-int8-*.onnx"))) == 1
    emb = [np.concatenate([e.embed(rgb, e.align(rgb, [f])) for rgb, f in faces]) for e in (e32, e8)]
    d32, d8 = (np.linalg.norm(x[:, None] - x[None], axis=2) for x in emb)
    assert np.abs(d32 - d8).max() < tolerance
    assert np.abs(d32 - d8).mean() < 0.02
    with pytest.raises(ValueError, match="precision"):
        build_encoder(name, {"precision": "fp16"})


@pytest.mark.skipif(int8.dot_products(), reason="this CPU has 8-bit dot products")
@pytest.mark.parametrize("name", ["dlib_resnet", "mobilefacenet"])
def test_auto_keeps_float32_where_int8_kernels_can_saturate(name):
    """On a CPU without 8-bit dot products `auto` is float32, and the report names no int8 copy."""
    from anonymizer.measure.encoder import ENCODERS, build_encoder

    assert build_encoder(name, {"device": "cpu", "precision": "auto"}).precision == "float32"
    rows = ENCODERS.factory(name).weight_files({"precision": "auto", "device": "cpu"}, None)
    assert not any("int8" in r["file"] for r in rows)


@pytest.mark.skipif(not int8.dot_products(), reason="this CPU has no 8-bit dot products: `auto` runs float32")
def test_the_report_names_int8_copies():
    """A recognizer's inventory row says where a run uses its 8-bit copy (auto on a CPU) and from which
    ranges; float32 says nothing of it."""
    from anonymizer.measure.encoder import ENCODERS

    for name in ("dlib_resnet", "mobilefacenet"):
        rows = ENCODERS.factory(name).weight_files({"precision": "auto", "device": "cpu"}, None)
        noted = [r for r in rows if "as its int8 copy" in r["file"]]
        assert len(noted) == 1 and noted[0]["name"] == name
        assert not any("int8" in r["file"] for r in ENCODERS.factory(name).weight_files({}, None))
