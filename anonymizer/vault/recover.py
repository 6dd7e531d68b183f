"""Recover the originals of a release: its images with every face region's original pixels put back.

Every check passes before anything appears at OUT: the release's manifest names the run of each output
(its `run_id` column, else the manifest's run), each run's vault is opened with the KEK given, every
record must be for the exact output released (its sha256 against the manifest, and the output's bytes
against both), every record's tag and every run's record set must verify. The images are written to a
hidden folder beside OUT and renamed to OUT at the end; on any failure it is removed. (OUT on S3: they
are uploaded once all of them are made.) OUT must be new or empty, and outside the release and the vault.

Each original is a PNG at OUT/<key>.png (a key already ending in .png keeps its name): pixels inside every
face window are byte-identical to the source's decoded pixels; outside them they are the released image's.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anonymizer import imageio
from anonymizer.release.layout import LATEST, MANIFEST
from anonymizer.storage import Location
from anonymizer.vault.errors import ReleaseMismatchError, VaultError, VaultLocationError
from anonymizer.vault.keys import KeyProvider
from anonymizer.vault.records import Box, open_record
from anonymizer.vault.vault import RunVault, inside, open_run

_DECODE_LIMIT = 1 << 31  # a release the pipeline made: its sizes were bounded when it was made
_COLUMNS = ("key", "output_key", "output_sha256")


@dataclass
class RecoverResult:
    out_dir: str
    images: int = 0                 # originals written (every image of the release)
    faces: int = 0                  # face regions put back
    runs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def output_name(key: str) -> str:
    return key if key.lower().endswith(".png") else key + ".png"


def _resolve(location: Location) -> Location:
    """DEST/<run id>/ as given, or the release DEST/LATEST names."""
    if not location.exists(MANIFEST) and location.exists(LATEST):
        return location.child(location.read_bytes(LATEST).decode().strip())
    return location


def _manifest_rows(rel: Location) -> list[dict]:
    if not rel.exists(MANIFEST):
        raise VaultError(f"no {MANIFEST} at {rel.uri}: not a release")
    manifest = rel.read_table(MANIFEST)
    missing = [c for c in _COLUMNS if c not in manifest.column_names]
    if missing:
        raise VaultError(f"{rel.uri}/{MANIFEST}: columns missing: {', '.join(missing)}")
    meta = {k.decode(): v.decode() for k, v in (manifest.schema.metadata or {}).items()}
    cols = list(_COLUMNS) + [c for c in ("run_id", "faces") if c in manifest.column_names]
    rows = manifest.select(cols).to_pylist()
    for r in rows:
        r["run_id"] = r.get("run_id") or meta.get("run_id")
        if not r["run_id"]:
            raise VaultError(f"{rel.uri}/{MANIFEST}: no run id for {r['key']} (no run_id column or metadata)")
    return rows


def _records_by_key(rows: list[dict], opened: dict[str, RunVault]) -> dict[str, list[dict]]:
    """Each released image's records, from the run that made its output; a record made for another output
    of that image is a release that does not match the vault."""
    row_of = {r["key"]: r for r in rows}
    out: dict[str, list[dict]] = {}
    for run_id, rv in opened.items():
        for rec in rv.records.to_pylist():
            row = row_of.get(rec["image_key"])
            if row is None or row["run_id"] != run_id:
                continue  # not in this release, or its output there came from another run
            if rec["output_sha256"] != row["output_sha256"]:
                raise ReleaseMismatchError(
                    f"{rec['image_key']}: the release's output (sha256 {row['output_sha256'][:16]}…) is not the one "
                    f"run {run_id}'s vault records were made for ({rec['output_sha256'][:16]}…)")
            out.setdefault(rec["image_key"], []).append(rec)
    return out


def _restore(rel: Location, row: dict, records: list[dict], opened: dict[str, RunVault]) -> np.ndarray:
    data = rel.read_bytes(row["output_key"])
    sha = hashlib.sha256(data).hexdigest()
    if sha != row["output_sha256"]:
        raise ReleaseMismatchError(f"{row['key']}: the released {row['output_key']} has sha256 {sha[:16]}…, the "
                                   f"manifest says {row['output_sha256'][:16]}…")
    try:
        dec = imageio.decode(data, _DECODE_LIMIT)
    except imageio.ImageError as exc:
        raise ReleaseMismatchError(f"{row['key']}: the released {row['output_key']} cannot be decoded: {exc}") from None
    four = dec.alpha is not None or any(r["channels"] == 4 for r in records)
    canvas = np.dstack([dec.rgb, dec.alpha if dec.alpha is not None else np.full(dec.rgb.shape[:2], 255, np.uint8)]) \
        if four else dec.rgb.copy()
    height, width = canvas.shape[:2]
    aead = opened[row["run_id"]].aead
    for rec in records:
        box = Box(rec["x0"], rec["y0"], rec["w"], rec["h"])
        if box.x0 + box.w > width or box.y0 + box.h > height:
            raise ReleaseMismatchError(f"{row['key']}: face {rec['face_index']}'s window {box} lies outside the "
                                       f"released image ({width}×{height})")
        pixels = open_record(aead, row["run_id"], rec)
        ys, xs = box.window()
        if pixels.shape[2] == 1:
            canvas[ys, xs, :3] = pixels
        else:
            canvas[ys, xs, :pixels.shape[2]] = pixels
    return canvas


def _write_png(path: Path, canvas: np.ndarray) -> None:
    code = cv2.COLOR_RGBA2BGRA if canvas.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(canvas, code), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise VaultError(f"{path.name}: cannot be encoded as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def _check_out(out: Location) -> None:
    if out.is_local:
        if os.path.lexists(out.base) and (not os.path.isdir(out.base) or os.listdir(out.base)):
            raise VaultError(f"{out.uri} already exists: recover writes into a new (or empty) folder only")
    elif next(iter(out.list()), None) is not None:
        raise VaultError(f"{out.uri} is not empty: recover writes into an empty prefix only")


def recover(release: Location | str, vault: Location | str, provider: KeyProvider, out_dir: Location | str,
            workers: int = 4) -> RecoverResult:
    """Write the original of every image of `release` (DEST/<run id>, or DEST whose LATEST names it) to
    `out_dir` (local or s3://), from the records in `vault` opened with `provider`'s KEK."""
    t0 = time.perf_counter()
    rel = _resolve(Location.parse(release) if isinstance(release, str) else release)
    out = Location.parse(out_dir) if isinstance(out_dir, str) else out_dir
    parent = Location(rel.fs, posixpath.dirname(rel.base), posixpath.dirname(rel.uri))
    dest = parent if parent.exists(LATEST) else rel  # DEST when the release sits in one
    for what, where in (("the release", dest), ("the vault", vault)):
        if inside(out, where) or inside(where, out):
            raise VaultLocationError(f"{out.uri} overlaps {what} ({where if isinstance(where, str) else where.uri}): "
                                     "the originals must be written somewhere else")
    rows = _manifest_rows(rel)
    _check_out(out)
    names: dict[str, str] = {}
    for r in rows:
        name = output_name(r["key"])
        if name in names:
            raise VaultError(f"{r['key']} and {names[name]} would both be recovered as {name}")
        names[name] = r["key"]
    run_ids = sorted({r["run_id"] for r in rows})
    opened = {rid: open_run(vault, rid, provider) for rid in run_ids}
    by_key = _records_by_key(rows, opened)
    result = RecoverResult(out.uri, runs=run_ids)
    for r in rows:
        found = len(by_key.get(r["key"], []))
        if (r.get("faces") or 0) > found:
            result.warnings.append(f"{r['key']}: {r['faces']} face(s) detected, {found} region(s) in the vault")

    if out.is_local:
        parent = Path(out.base).parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{Path(out.base).name}.recover-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="anonymizer-recover-"))
    try:
        def one(row: dict) -> int:
            records = by_key.get(row["key"], [])
            _write_png(tmp / output_name(row["key"]), _restore(rel, row, records, opened))
            return len(records)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(one, r) for r in rows]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()
        result.faces = sum(f.result() for f in futures)
        for rv in opened.values():
            rv.check()  # no record removed, added or altered since commit
        if out.is_local:
            if os.path.isdir(out.base):
                os.rmdir(out.base)  # empty (checked above)
            os.replace(tmp, out.base)
        else:
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                out.write_bytes(posixpath.join(*path.relative_to(tmp).parts), path.read_bytes())
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result.images = len(rows)
    result.seconds = time.perf_counter() - t0
    return result
