"""`anonymizer verify`: a clean release passes; each kind of leak or inconsistency is a named finding."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from anonymizer import imageio
from anonymizer.release.verify import metadata_in, verify_release
from conftest import REPO


def _img(seed: int, fmt: str) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build_release(root, outputs: dict[str, bytes], sources: dict[str, bytes] | None = None, faces=None, rows=None):
    """A release folder as release.publish writes it: images/, report.json, report.html, manifest.parquet."""
    run = root / "run-1"
    for key, data in outputs.items():
        (run / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        (run / "images" / key).write_bytes(data)
    sources = sources or {k: b"original " + k.encode() for k in outputs}
    report = json.dumps({"objects": [{"key": k, "status": "released"} for k in outputs]}).encode()
    (run / "report.json").write_bytes(report)
    (run / "report.html").write_text("<html></html>")
    cols = {"key": list(outputs), "output_key": ["images/" + k for k in outputs],
            "source_sha256": [_sha(sources[k]) for k in outputs], "output_sha256": [_sha(v) for v in outputs.values()],
            "output_size": [len(v) for v in outputs.values()], "origin": ["processed"] * len(outputs)}
    if faces is not None:
        cols["faces"] = [faces.get(k, 0) for k in outputs]
    if rows:
        for c in cols:
            cols[c] = cols[c] + [r[c] for r in rows]
    table = pa.table(cols).replace_schema_metadata({"report_sha256": _sha(report)})
    pq.write_table(table, run / "manifest.parquet")
    (root / "LATEST").write_text("run-1")
    return run


@pytest.fixture
def clean(tmp_path):
    return {"a.jpg": _img(1, "JPEG"), "sub/b.png": _img(2, "PNG"), "c.webp": _img(3, "WEBP"), "d.tiff": _img(4, "TIFF")}


def _cli(*args):
    """`anonymizer verify ARGS` in this process (one test runs it as a real subprocess)."""
    import contextlib

    from anonymizer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["verify", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_clean_release_passes_from_the_folder_or_its_latest(tmp_path, clean):
    run = build_release(tmp_path, clean)
    for where in (run, tmp_path):
        result = verify_release(str(where))
        assert result.passed and result.objects == 4, result.findings
    r = subprocess.run([sys.executable, "-m", "anonymizer.cli", "verify", str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and "CLEAN: 4 outputs" in r.stderr, r.stderr


def _with_exif(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x8825] = {2: (52.0, 31.0, 12.0)}
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, comment=b"Jane")
    return buf.getvalue()


def _png_with_text(data: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize("tamper,check", [
    ("exif", "metadata"), ("png_text", "metadata"), ("trailing", "metadata"), ("appended_jpeg", "metadata"),
    ("bytes", "manifest_mismatch"),
    ("extra", "unlisted_object"), ("missing", "missing_output"), ("undecodable", "undecodable"),
    ("unchanged_face", "unchanged_face"), ("symlink", "outside_release"), ("escaping_key", "outside_release"),
    ("wrong_format", "format"), ("report", "report"),
])
def test_each_leak_or_inconsistency_is_a_finding(tmp_path, clean, tamper, check):
    faces, sources, rows = None, None, None
    if tamper == "exif":
        clean["a.jpg"] = _with_exif(clean["a.jpg"])
    elif tamper == "png_text":
        clean["sub/b.png"] = _png_with_text(clean["sub/b.png"])
    elif tamper == "trailing":
        clean["a.jpg"] += b"hidden payload: the original face"
    elif tamper == "appended_jpeg":  # a whole JPEG after the output's end: its own end marker closes the file
        clean["a.jpg"] += _img(7, "JPEG")
    elif tamper == "undecodable":
        clean["a.jpg"] = clean["a.jpg"][:300]
    elif tamper == "unchanged_face":
        sources, faces = dict(clean), {"a.jpg": 2}
    elif tamper == "wrong_format":
        clean["a.jpg"] = clean["sub/b.png"]
    elif tamper == "escaping_key":
        rows = [{"key": "evil.jpg", "output_key": "images/../../evil.jpg", "source_sha256": "0", "output_sha256": "1",
                 "output_size": 1, "origin": "processed", **({"faces": 0} if faces else {})}]
    run = build_release(tmp_path, clean, sources, faces, rows)
    if tamper == "bytes":
        (run / "images" / "c.webp").write_bytes(_img(9, "WEBP"))
    elif tamper == "extra":
        (run / "images" / "not_in_manifest.jpg").write_bytes(clean["a.jpg"])
    elif tamper == "missing":
        (run / "images" / "d.tiff").unlink()
    elif tamper == "symlink":
        (tmp_path / "outside.jpg").write_bytes(clean["a.jpg"])
        (run / "images" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    elif tamper == "report":
        (run / "report.json").write_text(json.dumps({"objects": []}))
    result = verify_release(str(run))
    assert not result.passed
    assert check in {f.check for f in result.findings}, result.findings
    r = _cli(str(run))
    assert r.returncode == 3 and f"FINDING {check}" in r.stdout, (r.stdout, r.stderr)


def test_identical_output_without_face_information_is_a_warning(tmp_path, clean):
    run = build_release(tmp_path, clean, sources=dict(clean))
    result = verify_release(str(run))
    assert result.passed and {w.key for w in result.warnings if w.check == "warning:unchanged"} == set(clean)


def test_not_a_release_is_a_usage_error(tmp_path):
    r = _cli(str(tmp_path))
    assert r.returncode == 2 and "not a release" in r.stdout


def test_clean_outputs_scan_clean_in_every_format():
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "AVIF"):
        data = _img(5, fmt)
        dec = imageio.decode(data, 10**8)
        assert metadata_in(imageio.encode(dec.rgb, dec)) == [], fmt
