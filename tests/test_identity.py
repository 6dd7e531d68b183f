"""Keyed pseudonymisation's linker on real LFW photos, embedded by MobileFaceNet on YuNet's landmarks:
one person → one virtual identity across images and across a save/load (incremental) cycle, another key
→ another mapping that cannot open the state, and no embedding in plaintext at rest."""

from __future__ import annotations

import base64
import os
import pickle

import cv2
import numpy as np
import pytest

from anonymizer.eval import linking
from anonymizer.eval.lfw import split_of
from anonymizer.eval.reid import central_face
from anonymizer.identity import (STATE_NAME, IdentityStateError, Linker, TamperedIdentityStateError,
                                 WrongIdentityKeyError, identity_key_from, key_id, virtual_identity)
from anonymizer.identity.linker import MEASURED_THRESHOLDS
from anonymizer.storage import Location
from anonymizer.vault import KeySpecError
from conftest import LFW, moto_server

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
N_IDENTITIES = 1000
THRESHOLD = MEASURED_THRESHOLDS["mobilefacenet"]
PERSONS, PER_PERSON = 4, 4


@pytest.fixture(scope="module")
def faces(shared):
    """(keys, identities, embeddings) of PER_PERSON images each of the first PERSONS held-out LFW people
    (sorted names) with at least PER_PERSON images, in sorted key order."""
    from anonymizer.detect import build_detector
    from anonymizer.measure.encoder import build_encoder

    detector = build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]})
    encoder = build_encoder("mobilefacenet", {})
    names = [p.name for p in sorted(LFW.iterdir())
             if split_of(p.name) == "eval" and len(list(p.glob("*.jpg"))) >= PER_PERSON][:PERSONS]
    keys, ids, vecs = [], [], []
    for name in names:
        for path in sorted((LFW / name).glob("*.jpg"))[:PER_PERSON]:
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            face = central_face(detector.detect(rgb), rgb.shape[:2])
            assert face is not None and face.landmarks is not None, path
            vecs.append(encoder.embed(rgb, encoder.align(rgb, [face]))[0])
            keys.append(f"{name}/{path.name}")
            ids.append(name)
    return keys, ids, np.stack(vecs).astype(np.float32)


def _by_person(ids: list[str], values: list) -> dict[str, set]:
    out: dict[str, set] = {}
    for i, v in zip(ids, values):
        out.setdefault(i, set()).add(v)
    return out


def test_same_person_gets_one_virtual_identity_across_images(faces):
    keys, ids, emb = faces
    linker = Linker(THRESHOLD, "mobilefacenet")
    persons = linker.add(emb)
    assert linker.persons == PERSONS and linker.faces == len(keys)
    by_person = _by_person(ids, persons)
    assert all(len(p) == 1 for p in by_person.values()), by_person
    assert len(set.union(*by_person.values())) == PERSONS  # nobody merged
    vis = _by_person(ids, [virtual_identity(KEY, p, N_IDENTITIES) for p in persons])
    assert all(len(v) == 1 for v in vis.values())
    assert all(0 <= next(iter(v)) < N_IDENTITIES for v in vis.values())
    assert linker.assign(emb) == persons  # the read-only second pass agrees


def test_incremental_run_keeps_people_and_their_virtual_identities(faces, tmp_path):
    """Run 1 sees each person's first images, run 2 (a new Linker loaded from the saved state) the rest:
    the same ids as one run over everything, so the same virtual identities."""
    keys, ids, emb = faces
    whole = Linker(THRESHOLD, "mobilefacenet").add(emb)
    first = np.array([k.endswith(("_0001.jpg", "_0002.jpg")) for k in keys])
    run1 = Linker.open(tmp_path / "state", KEY, THRESHOLD, "mobilefacenet")
    assert run1.persons == 0  # nothing saved yet: a new state
    got1 = run1.add(emb[first])
    uri = run1.save(tmp_path / "state", KEY)
    assert uri.endswith(STATE_NAME) and sorted(os.listdir(tmp_path / "state")) == [STATE_NAME]
    run2 = Linker.open(str(tmp_path / "state"), KEY, THRESHOLD, "mobilefacenet")
    assert (run2.persons, run2.faces) == (PERSONS, int(first.sum()))
    got2 = run2.add(emb[~first])
    merged = np.empty(len(keys), object)
    merged[first], merged[~first] = got1, got2
    assert list(merged) == whole
    assert [virtual_identity(KEY, p, N_IDENTITIES) for p in merged] == \
        [virtual_identity(KEY, p, N_IDENTITIES) for p in whole]


def test_a_persons_label_is_set_once_and_kept_across_saves(faces, tmp_path):
    """A label (how the person reads) is set once: a later reading does not change it, a save and load
    keeps it, and people met later start without one."""
    keys, ids, emb = faces
    first = np.array([k.endswith(("_0001.jpg", "_0002.jpg")) for k in keys])
    run1 = Linker(THRESHOLD, "mobilefacenet")
    p1, p2 = run1.add(emb[first])[0], run1.add(emb[first])[2]
    assert run1.label(p1) is None and run1.settle(p1, None) is None
    assert run1.settle(p1, "F") == "F" and run1.settle(p1, "M") == "F"
    run1.save(tmp_path, KEY)
    run2 = Linker.load(tmp_path, KEY)
    assert (run2.label(p1), run2.label(p2)) == ("F", None)
    assert run2.settle(p2, "M") == "M" and run2.label(p1) == "F"
    with pytest.raises(KeyError, match="no person"):
        run2.label(f"#{run2.persons + 1}")
    with pytest.raises(ValueError, match="1 to 4 ASCII characters"):
        run2.settle(p2, "FMFMF")
    run3 = Linker(THRESHOLD, "mobilefacenet")
    p3 = run3.add(emb[:1])[0]
    assert run3.settle(p3, "Fd") == "Fd" and Linker.unseal(run3.seal(KEY), KEY).label(p3) == "Fd"


def test_another_key_gives_other_virtual_identities_and_cannot_open_the_state(faces, tmp_path):
    _, _, emb = faces
    linker = Linker(THRESHOLD, "mobilefacenet")
    persons = sorted(set(linker.add(emb)))
    mine = [virtual_identity(KEY, p, N_IDENTITIES) for p in persons]
    theirs = [virtual_identity(OTHER_KEY, p, N_IDENTITIES) for p in persons]
    assert mine != theirs
    # over many people the two mappings agree only by chance (1/N_IDENTITIES each)
    ids = [f"#{i}" for i in range(1, 2001)]
    agree = sum(virtual_identity(KEY, p, N_IDENTITIES) == virtual_identity(OTHER_KEY, p, N_IDENTITIES) for p in ids)
    assert agree <= 10
    linker.save(tmp_path, KEY)
    with pytest.raises(WrongIdentityKeyError, match="wrong identity key") as err:
        Linker.load(tmp_path, OTHER_KEY)
    assert key_id(KEY) in str(err.value) and key_id(OTHER_KEY) in str(err.value)
    assert KEY.hex() not in str(err.value) and base64.b64encode(KEY).decode() not in str(err.value)
    assert Linker.load(tmp_path, KEY).persons == PERSONS


def test_altered_or_foreign_state_is_a_clear_error(faces, tmp_path):
    _, _, emb = faces
    linker = Linker(THRESHOLD, "mobilefacenet")
    linker.add(emb)
    blob = linker.seal(KEY)
    flipped = bytearray(blob)
    flipped[-40] ^= 1
    with pytest.raises(TamperedIdentityStateError, match="does not verify"):
        Linker.unseal(bytes(flipped), KEY)
    with pytest.raises(TamperedIdentityStateError):
        Linker.unseal(blob[:-1], KEY)
    with pytest.raises(IdentityStateError, match="not an identity state"):
        Linker.unseal(b"PK\x03\x04 a zip file", KEY)
    linker.save(tmp_path, KEY)
    with pytest.raises(IdentityStateError, match="made with recognizer 'mobilefacenet', not 'dlib_resnet'"):
        Linker.load(tmp_path, KEY, encoder="dlib_resnet")
    with pytest.raises(FileNotFoundError, match="no identity state at"):
        Linker.load(tmp_path / "elsewhere", KEY)
    with pytest.raises(ValueError, match="have 512 dimensions.*gives 128"):
        linker.add(np.zeros((1, 512), np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        linker.add(np.full((1, 128), np.nan, np.float32))
    with pytest.raises(ValueError, match="faces x dim"):
        linker.add(emb[0])


def test_no_embedding_in_plaintext_at_rest_in_reprs_or_pickles(faces, tmp_path):
    keys, _, emb = faces
    linker = Linker(THRESHOLD, "mobilefacenet")
    linker.add(emb)
    linker.save(tmp_path, KEY)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [STATE_NAME]  # no temporary or side file left
    data = files[0].read_bytes()
    needles = [e.astype("<f4").tobytes() for e in emb] + [e.astype("<f8").tobytes() for e in emb]
    needles += [linker._means[i].astype("<f4").tobytes() for i in range(linker.persons)]
    needles += [linker._centroids[i].astype("<f4").tobytes() for i in range(linker.persons)]
    for n in needles:  # whole vectors, and their first 4 components (16 bytes) alone
        assert n not in data and n[:16] not in data
    assert not any(k.encode() in data for k in keys)  # nor which images were linked
    assert repr(linker) == f"Linker(encoder='mobilefacenet', threshold=1.075, space='', persons=4, faces={len(keys)})"
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(linker)


def test_deterministic_in_the_given_order(faces, tmp_path):
    keys, _, emb = faces
    a, b = Linker(THRESHOLD, "mobilefacenet"), Linker(THRESHOLD, "mobilefacenet")
    assert a.add(emb) == b.add(emb)
    assert np.array_equal(a._centroids[:a.persons], b._centroids[:b.persons])
    one, two = a.seal(KEY), a.seal(KEY)
    assert one != two  # a fresh salt and nonce per save
    assert Linker.unseal(one, KEY).add(emb[::-1]) == Linker.unseal(two, KEY).add(emb[::-1])
    order = linking.order_of(keys, "hashed")
    assert linking.link(emb, keys, THRESHOLD, "mobilefacenet", "hashed", "two") == \
        linking.link(emb, keys, THRESHOLD, "mobilefacenet", "hashed", "two")
    assert sorted(order.tolist()) == list(range(len(keys)))


def test_space_separates_states_under_one_key():
    x = np.eye(3, 8, dtype=np.float32)
    assert Linker(0.5, "e").add(x) == ["#1", "#2", "#3"]
    assert Linker(0.5, "e", space="site-b").add(x) == ["site-b#1", "site-b#2", "site-b#3"]
    assert virtual_identity(KEY, "#1", 10**9) != virtual_identity(KEY, "site-b#1", 10**9)


def test_identity_key_specs(tmp_path, monkeypatch):
    raw = tmp_path / "raw.key"
    raw.write_bytes(KEY)
    b64 = tmp_path / "b64.key"
    b64.write_text(base64.b64encode(KEY).decode() + "\n")
    monkeypatch.setenv("ANONYMIZER_TEST_IDENTITY_KEY", base64.b64encode(KEY).decode())
    assert identity_key_from(f"file:{raw}") == identity_key_from(f"file:{b64}") == KEY
    assert identity_key_from("env:ANONYMIZER_TEST_IDENTITY_KEY") == KEY
    with pytest.raises(KeySpecError, match="KMS key cannot key a MAC"):
        identity_key_from("kms:alias/x")
    with pytest.raises(KeySpecError, match="does not exist"):
        identity_key_from(f"file:{tmp_path / 'missing'}")
    with pytest.raises(KeySpecError, match="expected 32 bytes"):
        virtual_identity(b"short", "#1", 10)
    with pytest.raises(ValueError, match="n_identities"):
        virtual_identity(KEY, "#1", 0)


def test_linking_scores_on_known_labels():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["#1", "#1", "#2", "#3", "#3", "#3"]  # a split in two, b merged with c
    r = linking.scores(truth, pred, KEY, 10**9)
    assert r["pair_precision"] == pytest.approx(2 / 4)  # linked pairs: (a,a) + 3 in #3, of which (b,b) right
    assert r["pair_recall"] == pytest.approx(2 / 4)     # same-person pairs: 3 for a + 1 for b
    assert r["same_vi_images"] == pytest.approx(2 / 3)  # only a is scored (>= 3 images): 2 of 3
    assert r["merged_pairs"] == pytest.approx(1 / 3)    # (b, c) of 3 pairs of people
    assert (r["linked_persons"], r["people"], r["scored_persons"]) == (3, 3, 1)


@pytest.fixture(scope="module")
def s3(shared):
    with moto_server("vault") as client:
        yield client


def test_state_round_trip_through_s3(faces, s3):
    _, _, emb = faces
    linker = Linker(THRESHOLD, "mobilefacenet")
    persons = linker.add(emb)
    assert linker.save("s3://vault/identities", KEY) == f"s3://vault/identities/{STATE_NAME}"
    body = s3.get_object(Bucket="vault", Key=f"identities/{STATE_NAME}")["Body"].read()
    assert emb[0].astype("<f4").tobytes()[:16] not in body
    again = Linker.open(Location.parse("s3://vault/identities"), KEY, THRESHOLD, "mobilefacenet")
    assert again.assign(emb) == persons
    with pytest.raises(WrongIdentityKeyError):
        Linker.load("s3://vault/identities", OTHER_KEY)
