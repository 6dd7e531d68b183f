"""Keyed virtual faces through the whole run: `anonymizer run --identity-key` links each person's faces
(MobileFaceNet) and shows them as one virtual person of the bank who reads as the same sex and, as near as
the bank allows, the same skin tone (the realistic profile's `match_sex` and `tone_reading: descriptor`) in
every image, also in a later incremental run (the people kept, encrypted, in the vault); another key shows
other virtual people; a run without a key keys nothing; an operator without virtual identities is refused;
`vault destroy` forgets the people."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import LFW

from anonymizer.cli import main

READ_AS = {"Sheryl_Crow": "Fl", "Michelle_Kwan": "Fl", "Al_Gore": "Ml"}  # as they read in these photos
FIRST = {"Sheryl_Crow": ["0001", "0002"], "Michelle_Kwan": ["0001", "0003"], "Al_Gore": ["0001", "0002"]}
LATER = {"Sheryl_Crow": ["0004"], "Michelle_Kwan": ["0004"], "Al_Gore": ["0004"]}


def _copy(people: dict[str, list[str]], folder) -> None:
    folder.mkdir(exist_ok=True)
    for person, numbers in people.items():
        for n in numbers:
            shutil.copy(LFW / person / f"{person}_{n}.jpg", folder / f"{person}_{n}.jpg")


def _key(path, byte: int) -> str:
    path.write_bytes(bytes([byte]) * 32)  # fixed keys: the test's virtual identities do not vary run to run
    return f"file:{path}"


def _policy(root, bank, name: str = "keyed", **params) -> str:
    p = root / f"{name}.yaml"
    extra = "".join(f", {k}: {v}" for k, v in params.items())
    p.write_text(f"extends: realistic\nname: realistic-{name}\n"
                 f"anonymization: {{operator: {{name: bank, params: {{bank: '{bank}'{extra}}}}}}}\n")
    return str(p)


def _run(root, src, dest, run_id, key, vault=None, kek=None, policy="keyed") -> tuple[int, pd.DataFrame, dict]:
    args = ["run", str(src), str(root / dest), "--engine", "local", "--run-id", run_id,
            "--policy", str(root / f"{policy}.yaml")]
    if key:
        args += ["--identity-key", key]
    if vault:
        args += ["--vault", str(root / vault), "--vault-key", kek]
    code = main(args)
    return code, _bank_faces(root, dest, run_id), json.loads((root / f"{dest}.staging" / run_id / "report.json").read_text())


def _bank_faces(root, dest, run_id) -> pd.DataFrame:
    """The run's faces replaced from the bank, with the LFW person each one is."""
    faces = pd.read_parquet(root / f"{dest}.staging" / run_id / "metrics" / "faces.parquet")
    faces = faces[(faces["source"] == "primary") & (faces["method"] == "bank")].copy()
    faces["person"] = faces["key"].str.rsplit("_", n=1).str[0]
    return faces


def _methods(root, dest, run_id) -> pd.Series:
    """Each primary face's method, by image."""
    faces = pd.read_parquet(root / f"{dest}.staging" / run_id / "metrics" / "faces.parquet")
    return faces[faces["source"] == "primary"].set_index("key")["method"]


def _identity_per_person(faces: pd.DataFrame) -> dict[str, int]:
    by_person = faces.groupby("person")["virtual_identity"].agg(lambda s: set(s.astype(int)))
    for person, ids in by_person.items():
        assert len(ids) == 1, f"{person}'s faces show virtual identities {ids}"
    return {person: ids.pop() for person, ids in by_person.items()}


@pytest.fixture(scope="module")
def keyed(stylegan_bank, tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    _copy(FIRST, root / "src")
    _policy(root, stylegan_bank)
    key, kek = _key(root / "id.key", 1), _key(root / "kek.key", 9)
    first = _run(root, root / "src", "rel", "r1", key, "vault", kek)
    _copy(LATER, root / "src")
    later = _run(root, root / "src", "rel", "r2", key, "vault", kek)  # incremental: only the new images
    return {"root": root, "key": key, "first": first, "later": later, "bank": stylegan_bank}


def test_one_person_one_virtual_identity_within_a_run(keyed):
    code, faces, report = keyed["first"]
    assert code == 0, report["verdict"]["reason"]
    # a person whose virtual person the identity guard finds too close to them is blurred instead
    assert len(set(faces["person"])) >= 2 and set(faces["person"]) <= set(FIRST)
    assert set(_methods(keyed["root"], "rel", "r1")) <= {"bank", "fallback:blur:reidentifiable"}
    linking = report["linking"]
    assert linking["people"] == 3 and linking["people_new"] == 3 and linking["virtual_identities"] == 4
    # each person's virtual person reads as they do: two light-skinned women and a light-skinned man; the
    # bank has one person of each sex in some of the bands (light man, medium and dark woman, dark man), so
    # the women show its medium-skinned woman, the nearest band it has
    from anonymizer.anonymize.bankface import BankFace
    from anonymizer.pipeline.link import pool_for

    bank_reads = BankFace.virtual_identities({"bank": str(keyed["bank"]), "match_sex": True, "match_age": True,
                                              "tone_reading": "descriptor"}, None)
    # its medium-skinned woman reads under 13: with one person of each band and sex, too few to keep to an age group
    assert sorted(bank_reads) == ["Fd2", "Fm0", "Md2", "Ml2"]
    assert linking["read_as"] == {"woman, light skin, aged 20-59": 2, "man, light skin, aged 20-59": 1}
    shown = _identity_per_person(faces)
    assert {p: bank_reads[v] for p, v in shown.items()} == {p: {"F": "Fm0", "M": "Ml2"}[READ_AS[p][0]] for p in shown}
    assert all([v] == pool_for(READ_AS[p] + "2", bank_reads) for p, v in shown.items())
    assert linking["persisted"].endswith("/vault/identities")
    html = (keyed["root"] / "rel" / "r1" / "report.html").read_text()
    assert "Keyed virtual identities</strong> — 3 people (3 new this run)" in html
    assert ("as near as the bank allows (people read as: 1 man, light skin, aged 20-59; 2 woman, light skin, "
            "aged 20-59)") in html


def test_an_incremental_run_shows_known_people_the_same_way(keyed):
    _, first_faces, _ = keyed["first"]
    code, faces, report = keyed["later"]
    assert code == 0, report["verdict"]["reason"]
    assert set(_methods(keyed["root"], "rel", "r2").index) == {f"{p}_{n}.jpg" for p, ns in LATER.items() for n in ns}
    before, now = _identity_per_person(first_faces), _identity_per_person(faces)  # new images only, above
    assert len(before.keys() & now.keys()) >= 2 and all(before[p] == now[p] for p in before.keys() & now.keys())
    assert report["linking"]["people_known_before"] == 3 and report["linking"]["people_new"] == 0


def test_another_key_shows_other_virtual_people(keyed):
    root = keyed["root"]
    # The fixture bank has two women and two men, one in each of its bands: matched by sex alone (skin tone as
    # the photo reads it, which a keyed run does not match), the key decides which of them each person shows,
    # and this fixed key gives someone another than the first key does.
    _policy(root, keyed["bank"], "by-sex", tone_reading="ita")
    code, faces, _ = _run(root, root / "src", "other", "o1", _key(root / "other.key", 5), policy="by-sex")
    assert code == 0
    code, first, _ = _run(root, root / "src", "first", "f1", keyed["key"], policy="by-sex")
    assert code == 0
    mine, theirs = _identity_per_person(faces), _identity_per_person(first)
    both = mine.keys() & theirs.keys()  # a person too close to their virtual person is blurred instead
    assert len(both) >= 2 and any(mine[p] != theirs[p] for p in both), (mine, theirs)


def test_without_a_key_nothing_is_keyed(keyed):
    root = keyed["root"]
    code, faces, report = _run(root, root / "src", "plain", "p1", None)
    assert code == 0 and report["linking"] is None
    assert faces["virtual_identity"].isna().all()


def test_an_operator_without_virtual_identities_is_refused(keyed, tmp_path):
    root = keyed["root"]
    code = main(["run", str(root / "src"), str(tmp_path / "rel"), "--engine", "local", "--policy", "default",
                 "--identity-key", keyed["key"]])
    assert code == 2
    assert not (tmp_path / "rel.staging").exists() or not any((tmp_path / "rel.staging").rglob("*.parquet"))


def test_people_rest_sealed_in_the_vault_and_destroy_forgets_them(keyed):
    from anonymizer.identity import STATE_NAME, Linker, identity_key_from

    root = keyed["root"]
    people = root / "vault" / "identities" / STATE_NAME
    blob = people.read_bytes()
    assert blob.startswith(b"ANONYMIZER-IDENTITY-STATE")
    linker = Linker.unseal(blob, identity_key_from(keyed["key"]))
    assert linker.persons == 3 and linker.faces == 9  # six faces of the first run, three of the second
    # Re-running the first run (published already) must not put back its older state over the second's.
    _run(root, root / "src", "rel", "r1", keyed["key"], "vault", _key(root / "kek.key", 9))
    assert people.read_bytes() == blob
    for staged in (keyed["root"] / "rel.staging").rglob("embeddings.sealed"):
        assert staged.read_bytes().startswith(b"ANONYMIZER-IDENTITY-STATE")
    assert main(["vault", "destroy", str(keyed["root"] / "vault")]) == 0
    assert not people.exists()


def test_linking_on_ray_links_as_the_local_engine_does(keyed, ray_cluster):
    from anonymizer.pipeline import run_pipeline

    root = keyed["root"]
    src = root / "src_first"
    _copy(FIRST, src)
    # The same run id names the same people's space: the same key must then give the same virtual people.
    outcome = run_pipeline(str(src), str(root / "on_ray"), policy=str(root / "keyed.yaml"), engine="ray",
                           run_id="r1", identity_key=keyed["key"], workers=2)
    assert outcome.released, outcome.verdict.reason
    assert _identity_per_person(_bank_faces(root, "on_ray", "r1")) == _identity_per_person(keyed["first"][1])


def test_linking_a_shard_detected_together_links_as_one_by_one(keyed, monkeypatch):
    """`batch_detection: always` (a GPU's default): the linking pass detects each shard's images together (the
    anonymization pass reuses its faces), and the same people get the same virtual people."""
    from anonymizer.detect import Ensemble

    batches, detect_batch = [], Ensemble.detect_batch
    monkeypatch.setattr(Ensemble, "detect_batch", lambda self, images: batches.append(len(images))
                        or detect_batch(self, images))
    root = keyed["root"]
    src = root / "src_together"
    _copy(FIRST, src)
    (root / "together.yaml").write_text((root / "keyed.yaml").read_text().replace("name: realistic-keyed", (
        "name: realistic-together\nexecution: {batch_detection: always}")))
    code, faces, _ = _run(root, src, "together", "r1", keyed["key"], policy="together")
    assert code == 0
    images = pd.read_parquet(root / "together.staging" / "r1" / "metrics" / "images.parquet")
    assert sum(batches) == len(images) and len(batches) == images["shard"].nunique()
    assert _identity_per_person(faces) == _identity_per_person(keyed["first"][1])


def test_a_broken_image_in_a_keyed_run_is_recorded_not_fatal(keyed, tmp_path):
    src = tmp_path / "src"
    _copy({"Al_Gore": ["0001"]}, src)
    (src / "Broken_0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    code = main(["run", str(src), str(tmp_path / "rel"), "--engine", "local", "--run-id", "b", "--policy",
                 str(keyed["root"] / "keyed.yaml"), "--identity-key", keyed["key"]])
    assert code in (0, 3)
    images = pd.read_parquet(tmp_path / "rel.staging" / "b" / "metrics" / "images.parquet").set_index("key")
    assert "unreadable" in images.loc["Broken_0001.jpg", "error"]
    assert pd.isna(images.loc["Al_Gore_0001.jpg", "error"]) and images.loc["Al_Gore_0001.jpg", "faces_anonymized"] >= 1


def test_a_person_gets_the_nearest_pool_the_bank_has():
    from anonymizer.pipeline.link import pool_for

    labels = ["Ml", "Fd", "Md", "Fm", None]
    assert pool_for("Fd", labels) == [1]
    assert pool_for("Fl", labels) == [3]  # no light-skinned woman: the nearest band's
    assert pool_for("Mm", labels) == [0, 2]  # both neighbouring bands, equally near
    assert pool_for("F", labels) == [1, 3]  # a label settled while only sex was matched: the same sex
    assert pool_for(None, labels) == pool_for("Xd", labels) == [0, 1, 2, 3, 4]  # unlabelled, or nobody alike
    assert pool_for("-m", ["-l", "-d", "-d", None]) == [0, 1, 2]  # tone alone
    assert pool_for("-d", labels) == [1, 2]  # read as neither sex: either, of the band
    # leaning to a sex: those of it or of neither (a bank person who reads as neither: "-"), of the nearest band
    assert pool_for("fd", ["Ml", "Fd", "Md", "-d", "Fm"]) == [1, 3] and pool_for("ml", labels) == [0]
    assert pool_for("fl", ["Ml", "-m", "Fd"]) == [1]
    from anonymizer.bank.tone import in_words, reads_as

    assert reads_as("F", 1.7, True, True) == "Fd" and reads_as(None, 0.2, True, True) == "-l"
    assert reads_as(None, 1.7, True, True, lean="F") == "fd" and reads_as(None, 1.7, False, True, lean="F") == "-d"
    assert reads_as("M", None, True, False) == "M" and reads_as(None, 0.2, True, False, lean="M") is None
    assert in_words("Md") == "man, dark skin" and in_words("fm") == "leaning woman, medium skin"
    assert in_words("-l") == "light skin" and in_words("F") == "woman"
    # with age matched: the age group's digit last; pools keep to it where at least AGE_MIN_PEOPLE are of it
    assert reads_as("F", 1.7, True, True, age=70.0, by_age=True) == "Fd3" and in_words("Fd3") == (
        "woman, dark skin, 60 and over")
    assert reads_as(None, None, False, False, age=8.0, by_age=True) == "-0" and in_words("-0") == "under 13"
    assert reads_as("F", None, True, True, age=70.0, by_age=True) is None  # tone unread: waits, as before
    assert reads_as("M", 0.1, True, True, age=float("nan"), by_age=True) == "Ml"
    aged = ["Fd2", "Fd3", "Fd3", "Fd3", "Fd3", "Md3", "Fl3", "Fd0"]
    assert pool_for("Fd3", aged) == [1, 2, 3, 4]
    assert pool_for("Fd2", aged) == [0, 1, 2, 3, 4, 7]  # one woman aged 20-59 of her band: too few, any age
    assert pool_for("Fd", aged) == pool_for("Fd0", aged) == [0, 1, 2, 3, 4, 7]  # no age read; too few children
    assert pool_for("Fl3", aged) == [6]  # skin tone first: the band's, whatever their age
