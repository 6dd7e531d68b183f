"""The recovery vault with real crypto, real Parquet, real photos and YuNet's boxes, and S3 + KMS through
moto's server on 127.0.0.1: a release's originals come back byte-exact in every face region, and every
way to get them wrongly (wrong key, altered record, other release, destroyed vault) fails with nothing
written."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pickle

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PHOTOS, SHARED, moto_server

from anonymizer import imageio
from anonymizer.storage import Location
from anonymizer.vault import (Box, FileKey, KeySpecError, KmsKey, ReleaseMismatchError, TamperedRecordError,
                              VaultDestroyedError, VaultError, VaultLocationError, VaultWriter, WrongKeyError,
                              check_vault_location, destroy, key_provider_from, new_key_file, open_run, recover,
                              runs, vault_status)

PHOTO_NAMES = ["multiface.jpg", "group_8.jpg"]


# ---- a release made from real photos ------------------------------------------------------------------

def _window(face, shape: tuple[int, ...]) -> Box:
    """The detector's box grown by 1.4 (forehead to chin), clipped to the image."""
    h, w = shape[:2]
    cx, cy, half_w, half_h = face.x + face.w / 2, face.y + face.h / 2, face.w * 0.7, face.h * 0.7
    x0, y0 = max(0, int(cx - half_w)), max(0, int(cy - half_h))
    x1, y1 = min(w, int(np.ceil(cx + half_w))), min(h, int(np.ceil(cy + half_h)))
    return Box(x0, y0, x1 - x0, y1 - y0)


@pytest.fixture(scope="module")
def photos(shared):
    from anonymizer.detect import build_detector

    detector = build_detector("yunet", {"score_threshold": 0.6}, str(SHARED / "models"))
    out = {}
    for name in PHOTO_NAMES:
        dec = imageio.decode((PHOTOS / name).read_bytes(), 1 << 28)
        windows = [_window(f, dec.rgb.shape) for f in detector.detect(dec.rgb)]
        assert len(windows) >= 2, f"YuNet found {len(windows)} faces in {name}"
        out[f"photos/{name}"] = (dec, windows)
    return out


def _blurred(dec: imageio.Decoded, windows: list[Box], sigma: float = 9.0) -> np.ndarray:
    img = dec.rgb.copy()
    for b in windows:
        ys, xs = b.window()
        img[ys, xs] = cv2.GaussianBlur(dec.rgb[ys, xs], (0, 0), sigma)
    return img


def _publish(release: Location, run_id: str, photos: dict, fmt: str | None = None) -> dict[str, str]:
    """DEST/<run> as the pipeline lays it out: images/<key> and manifest.parquet. Returns key -> sha256."""
    rows = []
    for key, (dec, windows) in photos.items():
        like = dataclasses.replace(dec, format=fmt) if fmt else dec
        data = imageio.encode(_blurred(dec, windows), like)
        out_key = "images/" + key + (".png" if fmt == "PNG" else "")
        release.write_bytes(out_key, data)
        rows.append({"key": key, "output_key": out_key, "output_sha256": hashlib.sha256(data).hexdigest(),
                     "run_id": run_id, "faces": len(windows)})
    manifest = pa.Table.from_pylist(rows).replace_schema_metadata({"run_id": run_id})
    release.write_table("manifest.parquet", manifest)
    return {r["key"]: r["output_sha256"] for r in rows}


def _vault(vault: Location | str, run_id: str, provider, photos: dict, shas: dict[str, str]) -> VaultWriter:
    writer = VaultWriter(vault, run_id, provider)
    for i, (key, (dec, windows)) in enumerate(photos.items()):
        for face, b in enumerate(windows):
            ys, xs = b.window()
            writer.add(key, face, (b.x0, b.y0, b.w, b.h), dec.rgb[ys, xs], shas[key])
        writer.stage(f"shard-{i:03d}")
    writer.commit()
    return writer


def _read_png(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def _assert_recovered(out_dir, release: Location, photos: dict, whole: bool) -> None:
    for key, (dec, windows) in photos.items():
        got = _read_png((out_dir / (key + ".png")).read_bytes())
        released = imageio.decode(release.read_bytes("images/" + key + (".png" if whole else "")), 1 << 28).rgb
        inside = np.zeros(dec.rgb.shape[:2], bool)
        for b in windows:
            ys, xs = b.window()
            assert np.array_equal(got[ys, xs], dec.rgb[ys, xs]), f"{key}: face {b} not byte-identical"
            assert not np.array_equal(released[ys, xs], dec.rgb[ys, xs]), "the release must differ there"
            inside[ys, xs] = True
        assert np.array_equal(got[~inside], released[~inside]), f"{key}: outside the faces: the released pixels"
        if whole:  # a lossless release: the whole original back
            assert np.array_equal(got, dec.rgb)


@pytest.fixture()
def kek(tmp_path):
    return FileKey(new_key_file(tmp_path / "kek.b64"))


@pytest.fixture()
def local_run(tmp_path, photos, kek):
    release = Location.parse(str(tmp_path / "dest" / "run-1"))
    shas = _publish(release, "run-1", photos)
    vault = str(tmp_path / "vault")
    _vault(vault, "run-1", kek, photos, shas)
    return release, vault, shas


def _nothing_written(tmp_path, out) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".recover-" in p.name]


# ---- round trips ----------------------------------------------------------------------------------------

def test_round_trip_local_is_byte_exact_in_every_face(tmp_path, photos, kek, local_run):
    release, vault, _ = local_run
    result = recover(release.uri, vault, kek, str(tmp_path / "originals"))
    assert result.images == 2 and result.faces == sum(len(w) for _, w in photos.values()) and not result.warnings
    _assert_recovered(tmp_path / "originals", release, photos, whole=False)
    assert vault_status(vault, "run-1") == "pseudonymised" and vault_status(vault, "run-0") == "absent"
    key_doc = json.loads((tmp_path / "vault/runs/run-1/key.json").read_text())
    assert key_doc["kek"]["kind"] == "file" and len(base64.b64decode(key_doc["kek"]["wrapped"])) == 40  # wrapped
    assert set(key_doc["kek"]) == {"kind", "kek_id", "alg", "wrapped"}
    marker = json.loads((tmp_path / "vault/runs/run-1/_COMMITTED").read_text())
    assert marker["records"] == result.faces and not (tmp_path / "vault/runs/run-1/staged").exists()
    # a release given as DEST (LATEST names the run) resolves the same way
    (tmp_path / "dest" / "LATEST").write_text("run-1")
    assert recover(str(tmp_path / "dest"), vault, kek, str(tmp_path / "again")).faces == result.faces


@pytest.fixture(scope="module")
def s3(shared):
    with moto_server("vault", "rel", versioned=("vault",)) as client:
        yield client


@pytest.fixture(scope="module")
def kms_key(s3):
    from anonymizer.vault.keys import _kms_client

    client = _kms_client()
    key_id = client.create_key(Description="anonymizer vault test")["KeyMetadata"]["KeyId"]
    client.create_alias(AliasName="alias/anonymizer-vault", TargetKeyId=key_id)
    return key_id


def test_round_trip_on_s3_with_kms_and_crypto_shred_of_every_version(tmp_path, photos, s3, kms_key):
    provider = key_provider_from("kms:alias/anonymizer-vault")
    release = Location.parse("s3://rel/releases/run-s3")
    shas = _publish(release, "run-s3", photos, fmt="PNG")  # lossless: the whole original must come back
    _vault("s3://vault/v", "run-s3", provider, photos, shas)
    key_doc = json.loads(s3.get_object(Bucket="vault", Key="v/runs/run-s3/key.json")["Body"].read())
    assert key_doc["kek"]["kind"] == "kms" and key_doc["kek"]["kek_id"].endswith(kms_key)

    result = recover("s3://rel/releases/run-s3", "s3://vault/v", provider, str(tmp_path / "originals"))
    assert result.faces == sum(len(w) for _, w in photos.values())
    _assert_recovered(tmp_path / "originals", release, photos, whole=True)
    recover("s3://rel/releases/run-s3", "s3://vault/v", provider, "s3://rel/recovered")  # into S3 as well
    key = next(iter(photos))
    assert s3.get_object(Bucket="rel", Key=f"recovered/{key}.png")["Body"].read() == \
        (tmp_path / "originals" / f"{key}.png").read_bytes()

    # the bucket is versioned: a plain delete would leave key.json recoverable as an old version
    s3.put_object(Bucket="vault", Key="v/runs/run-s3/key.json", Body=json.dumps(key_doc).encode())  # 2 versions
    assert destroy("s3://vault/v", "run-s3") == ["run-s3"]
    versions = s3.list_object_versions(Bucket="vault", Prefix="v/runs/run-s3/key.json")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    assert vault_status("s3://vault/v", "run-s3") == "destroyed"
    with pytest.raises(VaultDestroyedError, match="destroyed"):
        recover("s3://rel/releases/run-s3", "s3://vault/v", provider, str(tmp_path / "late"))
    assert not (tmp_path / "late").exists()


def test_kms_wraps_and_unwraps_through_moto_bound_to_the_run(tmp_path, s3, kms_key):
    from anonymizer.vault.keys import _kms_client

    data_key = os.urandom(32)
    wrapped = KmsKey(kms_key).wrap(data_key, {"run_id": "r1"})
    assert data_key not in base64.b64decode(wrapped["wrapped"]) and wrapped["kek_id"].endswith(kms_key)
    assert key_provider_from("kms:alias/anonymizer-vault").unwrap(wrapped, {"run_id": "r1"}) == data_key
    assert pickle.loads(pickle.dumps(KmsKey(kms_key))).unwrap(wrapped, {"run_id": "r1"}) == data_key
    with pytest.raises(WrongKeyError, match="run r2"):
        KmsKey(kms_key).unwrap(wrapped, {"run_id": "r2"})  # another run's context
    other = _kms_client().create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(WrongKeyError):
        KmsKey(other).unwrap(wrapped, {"run_id": "r1"})
    with pytest.raises(WrongKeyError, match="wrapped by a kms KEK"):
        FileKey(new_key_file(tmp_path / "kek.b64")).unwrap(wrapped, {"run_id": "r1"})
    with pytest.raises(VaultError, match="NotFoundException"):
        KmsKey("alias/missing").wrap(data_key, {"run_id": "r1"})


# ---- failures: clear, and nothing written ---------------------------------------------------------------

def test_wrong_key_is_refused_and_nothing_is_written(tmp_path, local_run, monkeypatch):
    release, vault, _ = local_run
    out = tmp_path / "originals"
    other = FileKey(new_key_file(tmp_path / "other.b64"))
    with pytest.raises(WrongKeyError, match="wrong key"):
        recover(release.uri, vault, other, str(out))
    monkeypatch.setenv("VAULT_KEK", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(WrongKeyError, match="file KEK"):
        recover(release.uri, vault, key_provider_from("env:VAULT_KEK"), str(out))
    _nothing_written(tmp_path, out)
    # key.json altered under the right KEK id: AES key wrap's integrity check refuses it
    path = tmp_path / "vault/runs/run-1/key.json"
    doc = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(doc["kek"]["wrapped"]))
    raw[5] ^= 1
    doc["kek"]["wrapped"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(WrongKeyError, match="does not unwrap"):
        recover(release.uri, vault, FileKey(tmp_path / "kek.b64"), str(out))
    _nothing_written(tmp_path, out)


def _rewrite_records(vault: str, change) -> None:
    path = os.path.join(vault, "runs/run-1/records.parquet")
    rows = pq.read_table(path).to_pylist()
    pq.write_table(pa.Table.from_pylist(change(rows), pq.read_schema(path)), path)


def test_tampered_records_are_named_and_nothing_is_written(tmp_path, local_run, kek):
    release, vault, _ = local_run
    out = tmp_path / "originals"
    original = (tmp_path / "vault/runs/run-1/records.parquet").read_bytes()

    def flip(rows):
        ct = bytearray(rows[-1]["ciphertext"])
        ct[len(ct) // 2] ^= 0x40
        rows[-1]["ciphertext"] = bytes(ct)
        return rows

    def swap(rows):  # the first face of two images exchanged: each still a valid record, elsewhere
        a = next(i for i, r in enumerate(rows) if r["image_key"] == "photos/group_8.jpg")
        b = next(i for i, r in enumerate(rows) if r["image_key"] == "photos/multiface.jpg")
        for col in ("nonce", "ciphertext"):
            rows[a][col], rows[b][col] = rows[b][col], rows[a][col]
        return rows

    def move(rows):  # a window moved: its pixels would land elsewhere
        rows[0]["x0"] += 1
        return rows

    last_key = pq.read_table(tmp_path / "vault/runs/run-1/records.parquet").column("image_key")[-1].as_py()
    for change, named in ((flip, last_key), (swap, "photos/"), (move, "photos/")):
        (tmp_path / "vault/runs/run-1/records.parquet").write_bytes(original)
        _rewrite_records(vault, change)
        with pytest.raises(TamperedRecordError, match=f"{named}.*authentication tag"):
            recover(release.uri, vault, kek, str(out))
        _nothing_written(tmp_path, out)

    # a record removed: each remaining tag verifies, the committed set's seal does not
    (tmp_path / "vault/runs/run-1/records.parquet").write_bytes(original)
    _rewrite_records(vault, lambda rows: rows[1:])
    with pytest.raises(TamperedRecordError, match="record set is not the one committed"):
        recover(release.uri, vault, kek, str(out))
    _nothing_written(tmp_path, out)


def test_a_release_that_does_not_match_the_vault_is_refused(tmp_path, photos, local_run, kek):
    release, vault, shas = local_run
    out = tmp_path / "originals"
    key = "photos/group_8.jpg"
    dec, windows = photos[key]
    other = imageio.encode(_blurred(dec, windows, sigma=3.0), dec)  # another output of the same image
    good = release.read_bytes("images/" + key)
    release.write_bytes("images/" + key, other)
    with pytest.raises(ReleaseMismatchError, match=f"{key}: the released images/{key} has sha256"):
        recover(release.uri, vault, kek, str(out))  # the bytes are not the manifest's
    _nothing_written(tmp_path, out)
    manifest = release.read_table("manifest.parquet")
    sha = [hashlib.sha256(other).hexdigest() if k == key else s
           for k, s in zip(manifest.column("key").to_pylist(), manifest.column("output_sha256").to_pylist())]
    release.write_table("manifest.parquet", manifest.set_column(
        manifest.schema.get_field_index("output_sha256"), "output_sha256", pa.array(sha)))
    with pytest.raises(ReleaseMismatchError, match=f"{key}: the release's output .* is not the one run run-1"):
        recover(release.uri, vault, kek, str(out))  # consistent release, but not the one the vault was made for
    _nothing_written(tmp_path, out)
    release.write_bytes("images/" + key, good)
    release.write_table("manifest.parquet", manifest)
    assert recover(release.uri, vault, kek, str(out)).images == 2


def test_destroyed_vault_cannot_be_recovered_nor_written_again(tmp_path, photos, local_run, kek):
    release, vault, shas = local_run
    _vault(vault, "run-2", kek, photos, shas)
    assert runs(vault) == ["run-1", "run-2"]
    assert destroy(vault, "run-1") == ["run-1"]
    assert vault_status(vault, "run-1") == "destroyed" and vault_status(vault, "run-2") == "pseudonymised"
    assert sorted(p.name for p in (tmp_path / "vault/runs/run-1").iterdir()) == ["DESTROYED"]
    out = tmp_path / "originals"
    with pytest.raises(VaultDestroyedError, match="run run-1: the vault was destroyed at .*can no longer be recovered"):
        recover(release.uri, vault, kek, str(out))
    _nothing_written(tmp_path, out)
    with pytest.raises(VaultDestroyedError):
        VaultWriter(vault, "run-1", kek)  # a resumed run never re-creates a shredded vault
    assert destroy(vault) == ["run-1", "run-2"]  # every run; the destroyed one stays destroyed
    assert vault_status(vault, "run-2") == "destroyed"
    with pytest.raises(VaultError, match="no vault"):
        destroy(vault, "run-9")


def test_vault_inside_dest_is_refused(tmp_path):
    dest = tmp_path / "dest"
    for bad in (dest, dest / "vault", dest / "run" / "v"):
        with pytest.raises(VaultLocationError, match="inside DEST"):
            check_vault_location(str(bad), str(dest))
    with pytest.raises(VaultLocationError, match="inside the vault"):
        check_vault_location(str(tmp_path), str(dest))
    dest.mkdir()
    (tmp_path / "link").symlink_to(dest, target_is_directory=True)
    with pytest.raises(VaultLocationError):
        check_vault_location(str(tmp_path / "link" / "vault"), str(dest))  # through a symbolic link
    check_vault_location(str(tmp_path / "vault"), str(dest))
    (dest / "LATEST").write_text("run-1")
    for out in (dest / "run-1" / "originals", dest / "originals", tmp_path / "vault" / "originals", tmp_path):
        with pytest.raises(VaultLocationError, match="must be written somewhere else"):
            recover(str(dest / "run-1"), str(tmp_path / "vault"), None, str(out))  # originals never land in DEST
    check_vault_location(str(tmp_path / "dest.vault"), str(dest))  # a sibling sharing a name prefix
    check_vault_location("s3://bucket/vault", str(dest))


def test_vault_inside_an_s3_dest_is_refused(s3):
    for vault, dest in (("s3://rel/releases/vault", "s3://rel/releases"), ("s3://rel", "s3://rel/releases"),
                        ("s3://rel/releases/", "s3://rel/releases"), ("s3://rel/x/../releases/v", "s3://rel/releases")):
        with pytest.raises(VaultLocationError):
            check_vault_location(vault, dest)
    check_vault_location("s3://vault/v", "s3://rel/releases")
    check_vault_location("s3://rel/releases-vault", "s3://rel/releases")


# ---- exactly once across kill-and-resume ----------------------------------------------------------------

def test_commit_is_once_and_a_resumed_run_keeps_one_record_per_face(tmp_path, photos, kek):
    release = Location.parse(str(tmp_path / "dest" / "run-r"))
    shas = _publish(release, "run-r", photos)
    vault = Location.parse(str(tmp_path / "vault"))
    items = list(photos.items())

    def stage(writer, unit, key, sha=None):
        dec, windows = photos[key]
        for face, b in enumerate(windows):
            ys, xs = b.window()
            writer.add(key, face, b, dec.rgb[ys, xs], sha or shas[key])
        return writer.stage(unit)

    first = VaultWriter(vault, "run-r", kek)
    stage(first, "shard-000", items[0][0])
    stage(first, "shard-001", items[1][0])
    del first  # killed before commit
    worker = pickle.loads(pickle.dumps(VaultWriter(vault, "run-r", kek)))  # as a Ray worker gets it: same data key
    stage(worker, "shard-001", items[1][0])   # the resumed run produces shard 1 again
    stage(worker, "shard-900", items[0][0])   # and, re-sharded, image 0 under another unit
    stale = "0" * 64
    stage(worker, "shard-901", items[0][0], sha=stale)  # an output of image 0 that was not released
    with pytest.raises(VaultError, match="two different outputs"):
        VaultWriter(vault, "run-r", kek).commit()
    info = VaultWriter(vault, "run-r", kek).commit(outputs=shas)
    faces = sum(len(w) for _, w in photos.values())
    assert info.records == faces and info.images == 2 and not info.already
    table = vault.child("runs", "run-r").read_table("records.parquet")
    pairs = list(zip(table.column("image_key").to_pylist(), table.column("face_index").to_pylist()))
    assert len(pairs) == len(set(pairs)) == faces and stale not in table.column("output_sha256").to_pylist()

    committed = (tmp_path / "vault/runs/run-r/records.parquet").read_bytes()
    again = VaultWriter(vault, "run-r", kek)
    assert stage(again, "shard-000", items[0][0]) == 0  # after commit: nothing more is written
    assert again.commit().already
    assert (tmp_path / "vault/runs/run-r/records.parquet").read_bytes() == committed
    assert not (tmp_path / "vault/runs/run-r/staged").exists()
    assert recover(release.uri, vault, kek, str(tmp_path / "out")).faces == faces
    assert len(open_run(vault, "run-r", kek).records) == faces


def test_writer_refuses_bad_input_and_workers_never_create_keys(tmp_path, photos, kek):
    with pytest.raises(VaultError, match="no vault"):
        VaultWriter(str(tmp_path / "vault"), "run-w", kek, create=False)
    writer = VaultWriter(str(tmp_path / "vault"), "run-w", kek)
    dec, windows = photos["photos/group_8.jpg"]
    b = windows[0]
    ys, xs = b.window()
    sha = "a" * 64
    for args, message in (
        (("../x.jpg", 0, b, dec.rgb[ys, xs], sha), "unsafe key"),
        (("k.jpg", -1, b, dec.rgb[ys, xs], sha), "face index"),
        (("k.jpg", 0, b, dec.rgb[ys, xs], "nothex"), "output_sha256"),
        (("k.jpg", 0, (b.x0, b.y0, b.w + 1, b.h), dec.rgb[ys, xs], sha), "but the box is"),
        (("k.jpg", 0, b, dec.rgb[ys, xs].astype(np.float32), sha), "uint8"),
        (("k.jpg", 0, (0, 0, 0, 5), dec.rgb[:5, :0], sha), "w, h > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            writer.add(*args)
    writer.add("k.jpg", 0, b, dec.rgb[ys, xs], sha)
    with pytest.raises(VaultError, match="pending"):
        pickle.dumps(writer)
    with pytest.raises(ValueError, match="run id"):
        VaultWriter(str(tmp_path / "vault"), "a/b", kek)


def test_key_specs(tmp_path, monkeypatch):
    raw = tmp_path / "raw.key"
    raw.write_bytes(os.urandom(32))
    assert isinstance(key_provider_from(f"file:{raw}"), FileKey)
    FileKey(raw).wrap(os.urandom(32), {"run_id": "r"})  # 32 raw bytes are a key
    made = new_key_file(tmp_path / "new.key")
    assert made.stat().st_mode & 0o777 == 0o600 and len(base64.b64decode(made.read_text())) == 32
    with pytest.raises(KeySpecError, match="already exists"):
        new_key_file(made)
    monkeypatch.setenv("GOOD", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("SHORT", base64.b64encode(os.urandom(16)).decode())
    monkeypatch.setenv("JUNK", "not base64 at all!")
    data_key = os.urandom(32)
    env = key_provider_from("env:GOOD")
    assert env.unwrap(env.wrap(data_key, {"run_id": "r"}), {"run_id": "r"}) == data_key
    assert isinstance(key_provider_from("kms:arn:aws:kms:us-east-1:1:key/x"), KmsKey)
    assert key_provider_from("kms:arn:aws:kms:us-east-1:1:key/x").key_id == "arn:aws:kms:us-east-1:1:key/x"
    for spec, message in (("nothing", "use file:PATH"), ("gpg:x", "unknown kind"), ("file:", "needs a path"),
                          (f"file:{tmp_path}/missing", "does not exist"), ("env:UNSET_VAULT_KEK", "is not set"),
                          ("env:SHORT", "16 bytes"), ("env:JUNK", "not base64"), ("kms:", "needs a key id")):
        with pytest.raises(KeySpecError, match=message):
            key_provider_from(spec).wrap(data_key, {"run_id": "r"})
