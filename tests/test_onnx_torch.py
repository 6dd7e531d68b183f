"""The torch runtime of our ONNX networks (`anonymizer.onnx_torch`), which runs them on a CUDA GPU where
onnxruntime has no CUDA provider: here on the CPU (ANONYMIZER_ONNX_RUNTIME=torch), against onnxruntime, with
the real weights on a real group photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import PHOTOS

DETECTORS = {  # the default policy's three voters and its auditor
    "yunet": {"score_threshold": 0.3, "scales": [1.0]},
    "retinaface": {"score_threshold": 0.3, "scales": [1.0]},
    "centerface": {"score_threshold": 0.3, "scales": [1.0], "precision": "float32"},
    "mtcnn": {"min_face_size": 20, "thresholds": [0.6, 0.7, 0.8]},
}


@pytest.fixture(scope="module")
def photo(shared) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(PHOTOS / "group_1.jpg")), cv2.COLOR_BGR2RGB)


def _boxes(faces) -> np.ndarray:
    return np.array([[f.x, f.y, f.w, f.h, f.score] for f in faces])


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_detector_on_torch_finds_the_faces_onnxruntime_finds(name, photo, monkeypatch):
    from anonymizer.detect import build_detector

    on_ort = build_detector(name, DETECTORS[name])
    monkeypatch.setenv("ANONYMIZER_ONNX_RUNTIME", "torch")
    on_torch = build_detector(name, DETECTORS[name])
    session = getattr(on_torch, "_session", None) or on_torch._pnet
    assert session.get_providers() == ["torch (cpu)"]
    a, b = on_ort.detect(photo), on_torch.detect(photo)
    assert len(a) == len(b) > 3
    np.testing.assert_allclose(_boxes(a), _boxes(b), atol=0.05)


def test_mobilefacenet_on_torch_embeds_the_faces_as_onnxruntime_does(photo, monkeypatch):
    from anonymizer.detect import build_detector
    from anonymizer.measure.mobilefacenet import MobileFaceNetEncoder

    faces = [f for f in build_detector("yunet", {"score_threshold": 0.6}).detect(photo) if f.size >= 24]
    assert len(faces) > 3
    on_ort = MobileFaceNetEncoder(device="cpu")
    monkeypatch.setenv("ANONYMIZER_ONNX_RUNTIME", "torch")
    on_torch = MobileFaceNetEncoder(device="cpu")
    alignments = on_ort.align(photo, faces)
    a, b = on_ort.embed(photo, alignments), on_torch.embed(photo, alignments)
    assert np.abs(a - b).max() < 1e-4  # unit vectors


def test_an_op_the_torch_runtime_lacks_is_refused_naming_the_network_and_op():
    from onnx import TensorProto, helper

    from anonymizer.onnx_torch import TorchSession

    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="erf0")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="net7: op 'erf0' of type Erf is not supported"):
        TorchSession(helper.make_model(graph).SerializeToString(), "cpu", "net7")
