"""The recovery vault through the whole run: `anonymizer run --vault` keeps every anonymized face region's
original pixels encrypted, the report says the release is pseudonymised, `anonymizer recover` restores the
originals byte-exact in every face region, a resumed run writes the vault once, and `vault destroy` makes the
release anonymised."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import PHOTOS

from anonymizer import imageio
from anonymizer.cli import main

PHOTO_NAMES = ["group_2.jpg", "group_13.jpg"]


@pytest.fixture(scope="module")
def vaulted(shared, tmp_path_factory):
    from anonymizer.pipeline import run_pipeline
    from anonymizer.vault import new_key_file

    root = tmp_path_factory.mktemp("vaulted")
    src = root / "src"
    src.mkdir()
    for n in PHOTO_NAMES:
        shutil.copy(PHOTOS / n, src / n)
    key = new_key_file(root / "kek.b64")
    args = dict(engine="local", run_id="vaulted", vault=str(root / "vault"), vault_key=f"file:{key}")
    first = run_pipeline(str(src), str(root / "rel"), **args)
    again = run_pipeline(str(src), str(root / "rel"), **args)  # a re-run of a finished run id: nothing twice
    return {"root": root, "src": src, "key": key, "first": first, "again": again}


def test_a_vaulted_release_is_pseudonymised_and_records_every_face_once(vaulted):
    root, first = vaulted["root"], vaulted["first"]
    assert first.released, first.verdict.reason
    assert first.report["mode"]["mode"] == "pseudonymised"
    assert "pseudonymised" in (root / "rel" / "vaulted" / "report.html").read_text()
    records = pq.read_table(root / "vault" / "runs" / "vaulted" / "records.parquet").to_pylist()
    faces = pq.read_table(root / "rel.staging" / "vaulted" / "metrics" / "faces.parquet").to_pandas()
    primary = faces[faces["source"] == "primary"]
    assert len(records) == len(primary) > 2  # every anonymized face once, across the re-run
    assert len({(r["image_key"], r["face_index"]) for r in records}) == len(records)
    # Nothing of the vault under DEST.
    assert not {p.name for p in (root / "rel").rglob("*")} & {"records.parquet", "key.json", "_COMMITTED"}
    assert vaulted["again"].released


def test_recover_restores_every_face_region_byte_exact(vaulted, tmp_path):
    root = vaulted["root"]
    out = tmp_path / "originals"
    assert main(["recover", str(root / "rel"), "--vault", str(root / "vault"), "--key", f"file:{vaulted['key']}",
                 "--out", str(out)]) == 0
    records = pq.read_table(root / "vault" / "runs" / "vaulted" / "records.parquet").to_pylist()
    for name in PHOTO_NAMES:
        source = imageio.decode((PHOTOS / name).read_bytes(), 1 << 28).rgb
        restored = imageio.decode((out / f"{name}.png").read_bytes(), 1 << 28).rgb
        released = imageio.decode((root / "rel" / "vaulted" / "images" / name).read_bytes(), 1 << 28).rgb
        boxes = [(r["x0"], r["y0"], r["w"], r["h"]) for r in records if r["image_key"] == name]
        assert boxes
        for x0, y0, w, h in boxes:
            assert np.array_equal(restored[y0:y0 + h, x0:x0 + w], source[y0:y0 + h, x0:x0 + w])
            assert not np.array_equal(released[y0:y0 + h, x0:x0 + w], source[y0:y0 + h, x0:x0 + w])


def test_a_wrong_key_recovers_nothing(vaulted, tmp_path):
    from anonymizer.vault import new_key_file

    other = new_key_file(tmp_path / "other.b64")
    out = tmp_path / "originals"
    code = main(["recover", str(vaulted["root"] / "rel"), "--vault", str(vaulted["root"] / "vault"), "--key",
                 f"file:{other}", "--out", str(out)])
    assert code == 2 and not (out.exists() and any(out.iterdir()))


def test_a_vault_under_dest_is_refused_before_any_work(shared, tmp_path):
    from anonymizer.vault import new_key_file

    key = new_key_file(tmp_path / "kek.b64")
    code = main(["run", str(PHOTOS), str(tmp_path / "rel"), "--engine", "local", "--vault",
                 str(tmp_path / "rel" / "vault"), "--vault-key", f"file:{key}"])
    assert code == 2 and not (tmp_path / "rel").exists() and not (tmp_path / "rel.staging").exists()


def test_destroy_makes_the_release_anonymised(vaulted, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(vaulted["root"], root)
    assert main(["vault", "destroy", str(root / "vault")]) == 0
    from anonymizer.vault import vault_status

    assert vault_status(str(root / "vault"), "vaulted") == "destroyed"
    out = tmp_path / "originals"
    assert main(["recover", str(root / "rel"), "--vault", str(root / "vault"), "--key", f"file:{vaulted['key']}",
                 "--out", str(out)]) == 2
    assert not (out.exists() and any(out.iterdir()))
    status = json.loads(json.dumps({"s": vault_status(str(root / "vault"), "vaulted")}))
    assert status["s"] == "destroyed"
