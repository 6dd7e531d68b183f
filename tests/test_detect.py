import numpy as np
import pytest
from PIL import Image

from anonymizer.detect import build_detector
from anonymizer.faces import iou
from conftest import PHOTOS, lfw_images


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_yunet_finds_the_face_in_lfw_portraits(shared):
    det = build_detector("yunet", {"scales": [1.0]})
    paths = lfw_images(12)
    hits = 0
    for p in paths:
        faces = [f for f in det.detect(_rgb(p)) if f.size > 50]
        centre = [f for f in faces if abs(f.x + f.w / 2 - 125) < 30 and abs(f.y + f.h / 2 - 125) < 40]
        hits += bool(centre)
        for f in centre:  # landmarks lie inside (or at the edge of) their box
            assert f.landmarks.shape == (5, 2)
            assert ((f.landmarks[:, 0] > f.x - 5) & (f.landmarks[:, 0] < f.x + f.w + 5)).all()
    assert hits >= 11, f"YuNet found the centred face in only {hits}/12 LFW images"


def test_yunet_onnxruntime_and_opencv_find_the_same_faces(shared):
    """The onnxruntime backend re-implements FaceDetectorYN's padding, decoding and NMS around the same
    network: the same faces, in the same order, on crowd photos at two scales (one odd-sized input)."""
    ort_, cv = (build_detector("yunet", {"score_threshold": 0.3, "scales": [1.0, 2.0], "backend": b})
                for b in ("onnxruntime", "opencv"))
    assert (ort_.backend, cv.backend) == ("onnxruntime", "opencv")
    for name in ("group_25.jpg", "multiface.jpg", "group_3.jpg"):
        image = _rgb(PHOTOS / name)
        image = image[: image.shape[0] - 7, : image.shape[1] - 13]  # sides that are not multiples of 32
        a, b = ort_.detect_per_scale(image), cv.detect_per_scale(image)
        for s in (1.0, 2.0):
            assert len(a[s]) == len(b[s]) > 0, (name, s)
            for f, g in zip(a[s], b[s]):
                assert abs(f.score - g.score) < 1e-4 and np.abs(np.subtract(f.box, g.box)).max() < 0.01
                assert np.abs(f.landmarks - g.landmarks).max() < 0.01
    assert ort_.detect(np.zeros((600, 800, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="backend"):
        build_detector("yunet", {"backend": "tensorrt"})


def test_multiscale_finds_faces_that_one_scale_misses(shared):
    img = _rgb(PHOTOS / "group_25.jpg")  # a crowd of small faces
    one = build_detector("yunet", {"scales": [1.0]}).detect(img)
    multi = build_detector("yunet", {"scales": [1.0, 2.0, 3.0]}).detect(img)
    assert len(multi) > len(one) * 1.1, (len(one), len(multi))


def test_max_side_bounds_upscaling():
    det = build_detector("yunet", {"scales": [1.0, 4.0], "max_side": 1000})
    img = np.zeros((600, 800, 3), np.uint8)
    assert det.detect(img) == []  # runs (at 1× only: 4× would exceed max_side) and finds nothing in black


def test_tiny_images_give_no_garbage_detections():
    from anonymizer.detect import Ensemble

    det = Ensemble([build_detector("yunet", {"scales": [1.0, 2.0, 3.0]})], 0.3)
    rng = np.random.default_rng(1)
    for _ in range(10):  # below YuNet's stride its raw output is uninitialised memory
        img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        assert all(np.isfinite([f.x, f.y, f.w, f.h]).all() and f.w > 0 for f in det.detect(img))


def test_dlib_auditor_agrees_on_a_clear_portrait(shared):
    hog = build_detector("dlib_hog", {"upsample": 1, "min_score": 0.2})
    found = sum(bool(hog.detect(_rgb(p))) for p in lfw_images(8))
    assert found >= 7


# --- weighted box fusion ---------------------------------------------------------------------------


def _f(x, y, w, h, s, det="a"):
    from anonymizer.faces import Face

    return Face(float(x), float(y), float(w), float(h), s, det)


def test_wbf_fuses_two_overlapping_boxes_into_the_score_weighted_box():
    import pytest

    from anonymizer.faces import weighted_box_fusion

    a, b = _f(0, 0, 10, 10, 0.9, "yunet"), _f(2, 0, 10, 10, 0.6, "retinaface")  # IoU 2/3
    (fused,) = weighted_box_fusion([[a], [b]], [1.0, 1.0], 0.55)
    assert fused.x == pytest.approx((0.9 * 0 + 0.6 * 2) / 1.5)
    assert fused.x + fused.w == pytest.approx((0.9 * 10 + 0.6 * 12) / 1.5)
    assert (fused.y, fused.h) == pytest.approx((0.0, 10.0))
    assert fused.score == pytest.approx((0.9 + 0.6) / 2)  # both models agree: the mean of their scores
    assert fused.detector == "retinaface+yunet"
    # weights: the box and the score lean to the heavier model
    (heavy,) = weighted_box_fusion([[a], [b]], [2.0, 1.0], 0.55)
    assert heavy.score == pytest.approx((2 * 0.9 + 0.6) / 3)
    assert heavy.x == pytest.approx((1.8 * 0 + 0.6 * 2) / 2.4)


def test_wbf_a_face_only_one_detector_found_keeps_a_reduced_score():
    import pytest

    from anonymizer.faces import weighted_box_fusion

    lone, other = _f(100, 100, 20, 20, 0.8), _f(0, 0, 10, 10, 0.9, "b")
    fused = {round(f.x): f for f in weighted_box_fusion([[lone], [other]], [1.0, 3.0], 0.55)}
    assert fused[100].score == pytest.approx(0.8 * 1 / 4)
    assert fused[0].score == pytest.approx(0.9 * 3 / 4)
    assert (fused[100].x, fused[100].y, fused[100].w, fused[100].h) == (100, 100, 20, 20)  # alone: unchanged
    # a model's own duplicates (e.g. two of its scales) do not vote twice
    (dup,) = weighted_box_fusion([[_f(0, 0, 10, 10, 0.9), _f(1, 0, 10, 10, 0.5)], []], [1.0, 1.0], 0.55)
    assert dup.score == pytest.approx(0.9 / 2)


def test_wbf_does_not_depend_on_the_order_of_models_or_boxes():
    from anonymizer.faces import weighted_box_fusion

    rng = np.random.default_rng(0)
    models = []
    for m in range(3):  # three models seeing 6 faces with jitter, plus a few stray boxes
        faces = [_f(c * 40 + rng.normal(0, 2), 50 + rng.normal(0, 2), 20 + rng.normal(0, 2), 22, float(rng.uniform(0.3, 1)), f"m{m}")
                 for c in range(6) if rng.uniform() < 0.8]
        faces += [_f(rng.uniform(0, 400), 200, 15, 15, float(rng.uniform(0.3, 1)), f"m{m}") for _ in range(2)]
        models.append(faces)
    weights = [1.0, 2.0, 0.5]

    def key(fs):
        return sorted((round(f.x, 6), round(f.y, 6), round(f.w, 6), round(f.h, 6), round(f.score, 6), f.detector) for f in fs)

    reference = key(weighted_box_fusion(models, weights, 0.4))
    for perm in ([2, 0, 1], [1, 2, 0]):
        shuffled = [list(reversed(models[i])) for i in perm]
        assert key(weighted_box_fusion(shuffled, [weights[i] for i in perm], 0.4)) == reference
    assert len(reference) < sum(map(len, models))  # it did fuse


def test_wbf_ensemble_on_a_real_photo_raises_agreed_faces(shared):
    """YuNet and RetinaFace both find the large faces: fused, their score beats either alone's vote."""
    from anonymizer.detect import Ensemble

    img = _rgb(PHOTOS / "multiface.jpg")
    parts = [build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}),
             build_detector("retinaface", {"score_threshold": 0.5})]
    fused = Ensemble(parts, 0.4, merge="wbf", weights=[1.0, 1.0]).detect(img)
    large = [f for f in fused if f.size >= 40]
    assert len(large) >= 3
    for f in large:
        assert f.detector == "retinaface+yunet" and f.score > 0.5  # a lone detector could give at most 0.5
        assert f.landmarks is not None and f.landmarks.shape == (5, 2)
    assert all(f.score <= 0.5 + 1e-6 for f in fused if "+" not in f.detector)
    # min_score drops what only one detector saw
    strict = Ensemble(parts, 0.4, merge="wbf", weights=[1.0, 1.0], min_score=0.5).detect(img)
    assert all("+" in f.detector for f in strict) and len(strict) >= len(large)


def test_wbf_vote_per_scale_counts_only_scales_that_ran(shared):
    """Each YuNet scale votes; a scale skipped for max_side neither votes nor dilutes the others."""
    import pytest

    from anonymizer.detect import Ensemble

    img = _rgb(PHOTOS / "multiface.jpg")
    longest = max(img.shape[:2])
    one_scale = build_detector("yunet", {"scales": [1.0, 2.0], "max_side": longest + 10, "score_threshold": 0.5})
    fused = Ensemble([one_scale], 0.4, merge="wbf", vote_per_scale=True).detect(img)
    raw = one_scale.detect(img)  # only 1x fits: one voter, whose scores pass through unchanged
    assert sorted(f.score for f in fused) == pytest.approx(sorted(f.score for f in raw))
    both = build_detector("yunet", {"scales": [1.0, 2.0], "score_threshold": 0.5})
    fused = Ensemble([both], 0.4, merge="wbf", vote_per_scale=True).detect(img)
    large = [f for f in fused if f.size >= 40]
    assert large and all(f.score > 0.5 for f in large)  # seen at both scales
    per_scale = both.detect_per_scale(img)
    assert sorted(per_scale) == [1.0, 2.0]
    assert len(fused) <= sum(map(len, per_scale.values()))


def test_focus_windows_join_overlapping_squares_within_the_image():
    from anonymizer.detect.base import focus_windows
    from anonymizer.faces import Face

    faces = [Face(10, 10, 20, 20, 0.9, "a"), Face(30, 12, 20, 20, 0.9, "a"), Face(200, 150, 10, 10, 0.9, "a")]
    w = focus_windows(faces, (240, 320, 3), reach=2.0, margin=4)
    # each square: the centre +- (2 x 20 / 2 + 4), clipped to the image
    assert w.squares.tolist() == [[0, 0, 44, 44], [16, 0, 64, 46], [191, 141, 219, 169]]
    assert w.crops == [(0, 0, 68, 50), (187, 137, 223, 173)]  # the first two joined, each padded by the margin
    assert w.holds(Face(50, 30, 10, 10, 0.5, "b"))  # centre (55, 35): in the second square
    assert not w.holds(Face(60, 42, 10, 10, 0.5, "b"))  # centre (65, 47): in a crop's padding, no square
    assert focus_windows([], (240, 320, 3), 2.0, 4).crops == []


def test_upscaled_passes_in_windows_keep_only_faces_centred_in_their_squares(shared):
    from anonymizer.detect.base import focus_windows

    img = _rgb(PHOTOS / "group_1.jpg")
    yunet = build_detector("yunet", {"scales": [1.0, 2.0], "score_threshold": 0.5})
    whole = yunet._detect_at(yunet.prepared(img), 2.0)
    large = max(whole, key=lambda f: f.size)
    windows = focus_windows([large], img.shape, 2.0, 8)
    found = yunet.detect_within(yunet.prepared(img), 2.0, windows)
    assert found and all(windows.holds(f) for f in found)
    assert len(found) < len([f for f in whole if f.score >= 0.5])
    best = max(found, key=lambda f: iou(f, large))
    assert iou(best, large) > 0.9 and best.landmarks is not None  # the same face, in the image's pixels


def test_focused_ensemble_finds_what_the_whole_image_passes_find(shared):
    """The default policy's `focus`: on a photo of 52 faces, the same fused faces as every scale on the whole
    image."""
    from anonymizer.detect import build_ensemble
    from anonymizer.policy import load_policy

    detection = load_policy().detection
    assert detection.focus is not None
    img = _rgb(PHOTOS / "group_1.jpg")
    focused = build_ensemble(detection).detect(img)
    whole = build_ensemble(detection.model_copy(update={"focus": None})).detect(img)
    assert len(whole) >= 40 and len(focused) == len(whole)
    for f in whole:
        assert max(iou(f, g) for g in focused) > 0.9


def test_detector_stack_works_where_dlib_is_missing(shared):
    """The lent GPU machine has no dlib: the default stack must import and run there (dlib's own detectors
    import it when built)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['dlib'] = None\n"
            "import numpy as np\n"
            "from anonymizer.detect import build_ensemble\n"
            "from anonymizer.policy import load_policy\n"
            "print(len(build_ensemble(load_policy().detection).detect(np.zeros((64, 64, 3), np.uint8))))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "0", run.stderr[-2000:]


def _face_nearest(faces, x, y):
    return min(faces, key=lambda f: (f.x + f.w / 2 - x) ** 2 + (f.y + f.h / 2 - y) ** 2)


def _outline(image, face):
    from anonymizer.bank import shape as sh

    return sh.extend(sh.landmarker("dlib_shape68")(image, face))[sh.OUTLINE]


def test_hands_finds_the_hand_under_a_chin_and_no_hand_over_the_other_faces(shared):
    """multiface.jpg: a man (box centre near 465, 185) rests his chin on his hand: a palm, confirmed as a hand,
    inside his outline. Hands elsewhere in the photo (on a shoulder, beside a face) lie over none of the other
    five faces."""
    from anonymizer.anonymize.bankface import OCCLUDED_SHARE
    from anonymizer.detect.hands import MIN_PRESENCE, HandDetector

    image = np.asarray(Image.open(PHOTOS / "multiface.jpg").convert("RGB"))
    faces = build_detector("yunet", {"scales": [1.0]}).detect(image)
    hands = HandDetector()
    man = _face_nearest(faces, 465, 185)
    assert hands.covering(image, man, _outline(image, man)) >= OCCLUDED_SHARE
    palms = hands.palms(image, (int(man.x - man.w), int(man.y), int(man.x + 2 * man.w), int(man.y + 2 * man.h)))
    assert palms and man.x < palms[0].box[0] < man.x + man.w and hands.presence(image, palms[0]) >= MIN_PRESENCE
    assert [hands.covering(image, f, _outline(image, f)) for f in faces if f is not man] == [0.0] * (len(faces) - 1)


def test_hands_does_not_take_a_face_for_a_hand(shared):
    """The palm detector takes this woman's chin and mouth for a palm; the hand landmark network reads no hand there."""
    from anonymizer.detect.hands import MIN_PALM, MIN_PRESENCE, HandDetector

    image = np.asarray(Image.open(PHOTOS / "group_20.jpg").convert("RGB"))
    hands = HandDetector()
    faces = [f for f in build_detector("yunet", {"scales": [1.0]}).detect(image) if f.w >= 40]
    fooled = 0
    for f in faces:
        window = (int(f.x - f.w), int(f.y - f.h), int(f.x + 2 * f.w), int(f.y + 2 * f.h))
        window = (max(0, window[0]), max(0, window[1]), window[2], window[3])
        on_face = [p for p in hands.palms(image, window)
                   if f.x < (p.box[0] + p.box[2]) / 2 < f.x + f.w and f.y < (p.box[1] + p.box[3]) / 2 < f.y + f.h]
        if on_face and on_face[0].score >= MIN_PALM:
            fooled += 1
            assert hands.presence(image, on_face[0]) < MIN_PRESENCE
        assert hands.covering(image, f, _outline(image, f)) == 0.0
    assert fooled >= 1
