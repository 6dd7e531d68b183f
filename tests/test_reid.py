"""Re-identification attacks: exact metrics on hand-made scores, a small real run of the naive/reverse/parrot
protocols on LFW, and the ONNX encoder on an ONNX model built here (no download)."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from anonymizer.eval import reid
from conftest import LFW, REPO

# --- metrics on known numbers -------------------------------------------------------------------------


def test_threshold_at_far_accepts_at_most_far_of_impostors():
    impostor = np.arange(1000, dtype=float) / 1000  # 0.000 .. 0.999
    t = reid.threshold_at_far(impostor, 1e-2)
    assert t == pytest.approx(0.010)
    assert (impostor < t).mean() <= 1e-2
    assert reid.threshold_at_far(impostor, 0.0) == 0.0  # nothing accepted


def test_eer_rates_and_det_on_separable_and_overlapping_scores():
    genuine = np.array([0.1, 0.2, 0.3, 0.4])
    impostor = np.array([0.5, 0.6, 0.7, 0.8])
    assert reid.eer(genuine, impostor) == 0.0
    assert reid.rates_at(genuine, impostor, 0.45) == (0.0, 0.0)
    assert reid.rates_at(genuine, impostor, 0.65) == (0.5, 0.0)
    assert reid.eer(genuine, genuine.copy()) == pytest.approx(0.5, abs=0.13)  # identical distributions: chance
    _, fmr, fnmr = reid.det_curve(genuine, impostor)
    assert np.all(np.diff(fmr) >= 0) and np.all(np.diff(fnmr) <= 0)
    assert fmr[0] == 0 and fnmr[-1] == 0


def test_identification_rank1_and_calibration_on_synthetic_embeddings():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 8)) * 3
    ids = np.repeat(np.arange(20), 3)
    emb = centres[ids] + rng.normal(scale=0.1, size=(60, 8))
    cal, genuine, impostor = reid.calibrate(emb, ids.astype(str), 1e-3)
    assert cal["genuine_pairs"] == 20 * 3 and cal["impostor_pairs"] == 60 * 59 // 2 - 60
    assert (impostor < cal["threshold"]).mean() <= 1e-3 and cal["fmr_at_threshold"] <= 1e-3
    assert genuine.max() < cal["threshold"] and cal["tar_at_threshold"] == 1.0
    assert set(cal["by_far"]) == {"0.01", "0.001", "0.0001"}
    g = np.arange(60) % 3 == 0
    out, _, _ = reid.identification(emb[g], ids[g], emb[~g], ids[~g], 1e-3, cal["threshold"])
    assert out["rank1"] == 1.0 and out["eer"] == 0.0 and out["gallery"] == 20 and out["probes"] == 40
    shuffled, _, _ = reid.identification(emb[g], ids[g], rng.normal(size=(40, 8)) * 3, ids[~g], 1e-3, cal["threshold"])
    assert shuffled["rank1"] < 0.3  # unrelated probes: near chance (1/20)


def test_sweep_parser():
    assert reid._parse_sweep("blur:0.05,0.35;noise:0.8") == [("blur", 0.05), ("blur", 0.35), ("noise", 0.8)]
    assert reid._parse_sweep("generated;mask:1") == [("generated", 1.0), ("mask", 1.0)]
    with pytest.raises(ValueError, match="unknown anonymizer 'swirl'"):
        reid._parse_sweep("swirl:1")


# --- a real run on a few LFW identities ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, shared, components):
    out = tmp_path_factory.mktemp("reid")
    ap = argparse.ArgumentParser()
    reid.add_arguments(ap)
    args = ap.parse_args(["--lfw", str(LFW.parent), "--out", str(out), "--max-identities", "8",
                          "--sweep", "blur:0.02;mask:1.0", "--cache", str(out / "originals.json")])
    policy = reid.load_policy(args.policy)
    result, scores = reid.run_sweep(policy, args.lfw, args.sweep, args.far, args.min_images, args.images_per_identity,
                                    args.max_identities, components=components, log=None, cache=args.cache)
    reid.write(result, scores, out)
    return result, out


def test_protocols_report_every_metric(small_run):
    result, out = small_run
    assert result["dataset"]["identities"] >= 6 and result["dataset"]["gallery"] == result["dataset"]["identities"]
    assert 0.2 < result["calibration"]["threshold"] < 0.7
    assert result["clean"]["rank1"] >= 0.8  # the attacker recognises un-anonymized LFW faces
    for c in result["configs"]:
        assert 0 <= c["fta_rate"] <= 1 and "match_rate_at_calibrated" in c["same_image"]
        for proto in reid.PROTOCOLS:
            m = c["protocols"][proto]
            assert {"eer", "tar_at_far", "rank1", "fmr_at_calibrated", "tar_at_calibrated", "det"} <= set(m)
            assert len(m["det"]["fmr"]) == len(m["det"]["fnmr"]) > 10
    weak, blackout = result["configs"]
    # A barely-blurred face is still recognised; a blackout is not findable and near chance.
    assert weak["protocols"]["naive"]["rank1"] > blackout["protocols"]["naive"]["rank1"]
    assert weak["fta_rate"] < 0.5 < blackout["fta_rate"]
    saved = json.loads((out / "reid.json").read_text())
    assert saved["table"] == json.loads(json.dumps(result["table"]))
    page = (out / "reid.html").read_text()
    assert page.count("data:image/png;base64") == 4 and "data:image/jpeg" not in page  # 3 DET + histograms
    assert "Calibrated decision threshold" in page
    cached = json.loads((out / "originals.json").read_text())
    assert all("embedding" in e for e in cached["entries"].values() if e) and "pixels" not in json.dumps(cached)[:10000]


def test_generator_is_attacked_on_identities_it_never_saw(shared, components):
    """The generator (the generated profile: with its identity guard) goes through the same three protocols, built as the
    pipeline builds it, on LFW identities held out of its training only."""
    from anonymizer.eval.lfw import split_of

    policy = reid.load_policy(str(REPO / "policies" / "generated.yaml"))
    result, _ = reid.run_sweep(policy, LFW.parent, [("generated", 1.0)], max_identities=6, components=components,
                               log=None)
    assert result["dataset"]["identity_set"] == "heldout"
    items = reid.select(LFW.parent, max_identities=6, identities="heldout")
    assert items and all(split_of(it.identity) == "eval" for it in items)
    (gen,) = result["configs"]
    assert result["clean"]["rank1"] >= 0.8
    # every probe gets a new face: the attacker no longer finds the person (chance is 1/6 here)
    assert gen["protocols"]["naive"]["rank1"] <= 0.34 and gen["same_image"]["match_rate_at_calibrated"] == 0.0
    assert gen["fta_rate"] < 0.5  # a generated face is still a face


def test_markdown_table_lists_every_config(small_run):
    result, _ = small_run
    table = reid.markdown_table(result)
    assert table.count("\n") == 2 + len(result["configs"]) and "none (clean)" in table


# --- the ONNX encoder, on an ONNX model written here --------------------------------------------------


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def _field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    payload = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tiny_onnx() -> bytes:
    """A 112x112x3 -> 48-d "recognizer" (28x28 average pooling, flattened), as ONNX protobuf bytes.

    Written field by field (ModelProto 1 ir_version, 7 graph, 8 opset_import; GraphProto 1 node, 11 input,
    12 output; NodeProto 1 input, 2 output, 4 op_type, 5 attribute; AttributeProto 1 name, 20 type (7 = INTS),
    8 ints) so the test needs neither the onnx package nor a download.
    """
    def ints(name, values):
        return _field(1, name) + _field(20, 7) + b"".join(_field(8, v) for v in values)

    def node(op, inputs, outputs, attrs=()):
        return (b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs) + _field(4, op)
                + b"".join(_field(5, a) for a in attrs))

    def value_info(name, dims):
        shape = b"".join(_field(1, _field(1, d)) for d in dims)
        return _field(1, name) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))  # elem_type 1 = float

    graph = (_field(1, node("AveragePool", ["data"], ["pool"], [ints("kernel_shape", [28, 28]), ints("strides", [28, 28])]))
             + _field(1, node("Flatten", ["pool"], ["embedding"])) + _field(2, "tiny")
             + _field(11, value_info("data", [1, 3, 112, 112])) + _field(12, value_info("embedding", [1, 48])))
    return _field(1, 7) + _field(2, "anonymizer-tests") + _field(7, graph) + _field(8, _field(1, "") + _field(2, 11))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "tiny_face").mkdir()
    (d / "tiny_face" / "tiny_face.onnx").write_bytes(tiny_onnx())
    return d


@pytest.mark.parametrize("backend", ["dnn", "sface"])
def test_onnx_encoder_embeds_aligned_faces(onnx_dir, components, backend):
    from anonymizer.components import weight_files
    from anonymizer.measure.encoder import ENCODERS, build_encoder

    enc = build_encoder("onnx", {"model": "tiny_face.onnx", "backend": backend}, str(onnx_dir))
    assert enc.name == "onnx:tiny_face.onnx"
    image = cv2.cvtColor(cv2.imread(str(LFW / "Tony_Blair" / "Tony_Blair_0001.jpg")), cv2.COLOR_BGR2RGB)
    face = reid.central_face(components.detector.detect(image), image.shape[:2])
    with_landmarks = enc.embed(image, enc.align(image, [face]))
    from_dlib = enc.embed(image, enc.align(image, [reid._bare(face)]))  # landmarks found on the image itself
    assert with_landmarks.shape == from_dlib.shape == (1, 48)
    assert np.linalg.norm(with_landmarks, axis=1) == pytest.approx(1.0, abs=1e-5)
    # Both alignments (YuNet's landmarks; dlib's 5 points found on the image) put the eyes at the template's.
    from anonymizer.measure.encoder import ARCFACE_TEMPLATE

    eyes = np.hstack([face.landmarks[:2], np.ones((2, 1))])
    for m in (enc.align(image, [face])[0], enc.align(image, [reid._bare(face)])[0]):
        assert np.abs(eyes @ m.T - ARCFACE_TEMPLATE[:2]).max() < 6
    # The chip really is the ArcFace-aligned face: pooling it by hand gives the network's output.
    chip = cv2.warpAffine(image, enc.align(image, [face])[0], (112, 112))
    if backend == "dnn":
        expected = ((chip.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1).reshape(3, 4, 28, 4, 28).mean((2, 4))
        expected = expected.reshape(-1) / np.linalg.norm(expected)
        assert with_landmarks[0] == pytest.approx(expected, abs=1e-4)
    rows = weight_files(ENCODERS, "onnx", {"model": "tiny_face.onnx", "licence": "test"}, str(onnx_dir))
    assert rows[0]["file"] == "tiny_face.onnx" and len(rows[0]["sha256"]) == 64 and rows[0]["licence"] == "test"
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ENCODERS.create("onnx", model="missing.onnx", model_dir=str(onnx_dir))


def test_dlib_encoder_aligned_by_68_points_still_tells_people_apart(components):
    """The evaluation's re-aligned attacker: the same network on a chip aligned by 68 points."""
    from anonymizer.measure.encoder import build_encoder

    five, sixty_eight = build_encoder("dlib_resnet", {}), build_encoder("dlib_resnet", {"landmarks": 68})
    names = ["Tony_Blair/Tony_Blair_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg"]
    images = [cv2.cvtColor(cv2.imread(str(LFW / n)), cv2.COLOR_BGR2RGB) for n in names]
    faces = [reid.central_face(components.detector.detect(im), im.shape[:2]) for im in images]
    for enc in (five, sixty_eight):
        e = [enc.embed(im, enc.align(im, [f]))[0] for im, f in zip(images, faces)]
        assert np.linalg.norm(e[0] - e[1]) < 0.6 < np.linalg.norm(e[0] - e[2])
    e5, e68 = (enc.embed(images[0], enc.align(images[0], [faces[0]]))[0] for enc in (five, sixty_eight))
    assert 0 < np.linalg.norm(e5 - e68) < 0.3  # a different crop of the same face: close, not identical
    with pytest.raises(ValueError, match="5 or 68"):
        build_encoder("dlib_resnet", {"landmarks": 7})
