import numpy as np
import pytest
from PIL import Image

from anonymizer.anonymize import ANONYMIZERS, face_rngs
from anonymizer.regions import union_mask
from anonymizer.measure.metrics import reid_distances
from conftest import PHOTOS, lfw_images

OPERATORS = {"blur": 0.35, "pixelate": 0.15, "noise": 0.8, "mask": 1.0}


@pytest.fixture(scope="module")
def scene(components):
    img = np.asarray(Image.open(PHOTOS / "multiface.jpg").convert("RGB"))
    return img, components.detector.detect(img)


@pytest.mark.parametrize("name", OPERATORS)
def test_pixels_outside_masks_are_byte_identical_and_inside_changed(scene, name):
    img, faces = scene
    assert len(faces) >= 4
    res = ANONYMIZERS.create(name, strength=OPERATORS[name]).anonymize(img, faces, face_rngs(0, "k", len(faces)))
    mask = union_mask(res.masks, img.shape[:2])
    assert np.array_equal(res.image[mask == 0], img[mask == 0])
    core = mask >= 0.99
    changed = np.abs(res.image.astype(int) - img.astype(int)).max(axis=2)[core]
    assert (changed > 0).mean() > 0.5
    assert len(res.masks) == len(faces) and res.methods == [name] * len(faces)


def test_region_covers_forehead_to_chin(scene):
    img, faces = scene
    res = ANONYMIZERS.create("mask", strength=1.0).anonymize(img, faces, face_rngs(0, "k", len(faces)))
    for f, m in zip(faces, res.masks):
        ys, xs = m.window
        assert ys.start <= f.y - 0.1 * f.h and ys.stop >= f.y + f.h  # grows above the detector box
        cx, cy = int(f.x + f.w / 2) - m.x0, int(f.y + f.h / 2) - m.y0
        assert m.alpha[cy, cx] == 1.0


def test_reproducible_for_same_seed_key_and_index(scene):
    img, faces = scene
    op = ANONYMIZERS.create("noise", strength=0.8)
    a = op.anonymize(img, faces, face_rngs(7, "a.jpg", len(faces))).image
    b = op.anonymize(img, faces, face_rngs(7, "a.jpg", len(faces))).image
    c = op.anonymize(img, faces, face_rngs(8, "a.jpg", len(faces))).image
    d = op.anonymize(img, faces, face_rngs(7, "b.jpg", len(faces))).image
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_strong_operators_push_faces_away_from_their_identity(components):
    """On LFW portraits, blur at the default strength leaves few faces within dlib's same-person distance."""
    op = ANONYMIZERS.create("blur", strength=0.35)
    weak = ANONYMIZERS.create("blur", strength=0.02)
    strong_d, weak_d = [], []
    for p in lfw_images(15):
        img = np.asarray(Image.open(p).convert("RGB"))
        faces = [f for f in components.detector.detect(img) if f.size > 60][:1]
        if not faces:
            continue
        for operator, out in ((op, strong_d), (weak, weak_d)):
            res = operator.anonymize(img, faces, face_rngs(0, str(p), 1))
            out += reid_distances(components.encoder, img, res.image, faces, 32)
    assert len(strong_d) >= 12
    assert np.median(weak_d) < 0.6 < np.median(strong_d)
    assert np.mean(np.array(strong_d) < 0.6) <= 0.2
