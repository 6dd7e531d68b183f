"""dlib's face-recognition ResNet run by torch gives dlib's own descriptors, in batches."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import lfw_images


@pytest.fixture(scope="module")
def faces_and_shapes(shared):
    import cv2
    import dlib

    from anonymizer.models import locate

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(locate("dlib_shape5")))
    out = []
    for path in lfw_images(12):
        img = np.ascontiguousarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        shapes = dlib.full_object_detections()
        shapes.extend(sp(img, r) for r in det(img, 0))
        if len(shapes):
            out.append((img, shapes))
    assert len(out) >= 10
    return out


def test_descriptors_equal_dlibs(faces_and_shapes):
    import dlib

    from anonymizer.measure.encoder import DlibResNetEncoder
    from anonymizer.models import locate

    reference = dlib.face_recognition_model_v1(str(locate("dlib_resnet")))
    enc = DlibResNetEncoder(device="cpu")
    ours, theirs = [], []
    for img, shapes in faces_and_shapes:
        theirs += [np.array(v) for v in reference.compute_face_descriptor(img, shapes)]
        ours += list(enc.embed(img, list(shapes)))
    ours, theirs = np.array(ours), np.array(theirs)
    assert ours.shape == theirs.shape and ours.shape[1] == 128
    assert np.abs(ours - theirs).max() < 1e-4
    # and they are not all alike: the distances between people are dlib's too
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=2)
    d_theirs = np.linalg.norm(theirs[:, None] - theirs[None], axis=2)
    assert d_theirs.max() > 0.5 and np.abs(d_ours - d_theirs).max() < 1e-4


def test_a_foreign_file_is_refused_naming_it(tmp_path):
    from anonymizer.measure.dlib_resnet_torch import DlibModelFormatError, read_dlib_resnet
    from anonymizer.models import locate

    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    bad.write_bytes(locate("dlib_shape5").read_bytes())
    with pytest.raises(DlibModelFormatError, match=str(bad)):
        read_dlib_resnet(bad)
    cut = tmp_path / "cut.dat"
    cut.write_bytes(locate("dlib_resnet").read_bytes()[:5_000_000])
    with pytest.raises(DlibModelFormatError, match="cut.dat"):
        read_dlib_resnet(cut)
