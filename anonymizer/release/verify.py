"""Prove a release is clean, from its bytes alone: `anonymizer verify RELEASE`.

For a release folder DEST/<run id>/ (or DEST, whose LATEST names it), local or on S3:

- every file carries pixels only: no EXIF, GPS, EXIF thumbnail, XMP, IPTC, ICC, comment or text block
  (Pillow's view of the file, and an independent walk of the JPEG segments / PNG chunks / WebP chunks,
  which also refuses data hidden after the (first) end of the image);
- every output decodes, as the format its extension names;
- the manifest matches the bytes: each output exists with the size and sha256 the manifest records, and so
  does every other file (report, Data Docs), whose hashes the manifest's `files` metadata lists;
- nothing is in the release that the manifest does not list, no output key could land outside the release
  prefix, no symbolic link; the report's images are its PNG charts, report.pdf is a PDF, and the Data Docs
  pages hold no markup great-expectations does not write;
- no output is byte-identical to its source where faces were found (the manifest's `unchanged` and `faces`
  columns; without face information, an identical output is a warning);
- with `--public-key`, the manifest's Ed25519 signature (manifest.parquet.sig, made at publish with the key
  $ANONYMIZER_SIGNING_KEY_FILE names) matches it: no row or hash was edited after publishing.

`check_contents(location, manifest, report_json)` runs the same checks on a release being built, before
its manifest is written: release.publish can refuse to publish on any finding (fail closed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import posixpath
import struct
from html.parser import HTMLParser
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from anonymizer import exit_codes, imageio
from anonymizer.release.layout import IMAGES, LATEST, MANIFEST, REPORT_FILES, REPORT_PREFIXES
from anonymizer.storage import Location, UnsafeKeyError, check_key

REQUIRED_COLUMNS = ("key", "output_key", "output_sha256", "output_size")
SIGNATURE = MANIFEST + ".sig"  # raw Ed25519 signature of the manifest file's bytes
FILES_META = "files"  # manifest metadata: {name: sha256} of every file of the release that is not an output
SIGNING_KEY_ENV = "ANONYMIZER_SIGNING_KEY_FILE"  # PEM Ed25519 private key (openssl genpkey -algorithm ed25519)
_DECODE_LIMIT = 1 << 31  # the release is checked, not defended against: decode whatever it holds
_READERS = 8


@dataclass
class Finding:
    check: str
    key: str
    detail: str


@dataclass
class VerifyResult:
    release: str
    objects: int = 0                                   # outputs checked
    findings: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # keys whose outputs are byte-identical

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {"release": self.release, "passed": self.passed, "objects": self.objects,
                "findings": [asdict(f) for f in self.findings], "warnings": [asdict(w) for w in self.warnings],
                "duplicates": self.duplicates}


# ---- byte-level metadata scans, independent of Pillow ---------------------------------------------------

_JPEG_ALLOWED_APP = {0xE0: b"JFIF\x00", 0xEE: b"Adobe"}  # JFIF header; Adobe's colour-transform flag


def _entropy_end(data: bytes, i: int) -> int:
    """Where the entropy-coded data from `i` ends: the next marker that is not a stuffed 0xFF00 or a restart."""
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= len(data):
            return -1
        nxt = data[j + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            i = j + 2
        elif nxt == 0xFF:
            i = j + 1  # fill bytes before a marker
        else:
            return j


def _scan_jpeg(data: bytes) -> list[str]:
    """Segment by segment and through each scan to the first end-of-image marker: anything after it (another
    JPEG appended, whose own end marker would end a search from the back) is hidden data."""
    found, i = [], 2
    if data[:2] != b"\xff\xd8":
        return ["not a JPEG stream"]
    while i + 2 <= len(data):
        if data[i] != 0xFF:
            return found + [f"garbage between JPEG segments at byte {i}"]
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            if data[i + 2:].strip(b"\x00"):
                found.append(f"{len(data) - i - 2} bytes after the end of the image")
            return found
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD8:
            return found + [f"a second start-of-image marker at byte {i}"]
        if i + 4 > len(data):
            break
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        payload = data[i + 4:i + 2 + length]
        if 0xE0 <= marker <= 0xEF:
            ok = _JPEG_ALLOWED_APP.get(marker)
            if not ok or not payload.startswith(ok):
                found.append(f"APP{marker - 0xE0} segment ({payload[:12]!r})")
            elif marker == 0xE0 and length > 16:
                found.append("JFIF segment with an embedded thumbnail")
        elif marker == 0xFE:
            found.append("COM (comment) segment")
        i += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            i = _entropy_end(data, i)
            if i < 0:
                return found + ["no end-of-image marker"]
    return found + ["truncated JPEG segments"]


_PNG_ALLOWED = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"pHYs", b"gAMA", b"sRGB", b"cHRM", b"sBIT", b"bKGD"}


def _scan_png(data: bytes) -> list[str]:
    found, i = [], 8
    while i + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[i:i + 8])
        if ctype not in _PNG_ALLOWED:
            found.append(f"{ctype.decode('latin-1')} chunk")
        i += 12 + length
        if ctype == b"IEND":
            if data[i:]:
                found.append(f"{len(data) - i} bytes after IEND")
            return found
    return found + ["no IEND chunk"]


_WEBP_ALLOWED = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH"}


def _scan_webp(data: bytes) -> list[str]:
    found, i = [], 12
    end = 8 + struct.unpack("<I", data[4:8])[0]
    while i + 8 <= min(end, len(data)):
        ctype, length = struct.unpack("<4sI", data[i:i + 8])
        if ctype not in _WEBP_ALLOWED:
            found.append(f"{ctype.decode('latin-1')} chunk")
        i += 8 + length + (length & 1)
    if len(data) > end:
        found.append(f"{len(data) - end} bytes after the RIFF container")
    return found


def metadata_in(data: bytes) -> list[str]:
    """Every metadata block or hidden payload found in an encoded image (empty: pixels only)."""
    found = [f"{kind} ({n})" for kind, n in sorted(imageio.metadata_fields(data).items())]
    if data[:2] == b"\xff\xd8":
        found += _scan_jpeg(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        found += _scan_png(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found += _scan_webp(data)
    return found


# ---- the release ----------------------------------------------------------------------------------------

def _listing(loc: Location) -> tuple[list[str], list[Finding]]:
    keys, bad = [], []
    for e in loc.list(refused=True):
        if e.refused:
            bad.append(Finding("outside_release", e.key, e.refused))
        else:
            keys.append(e.key)
    return keys, bad


def check_output(key: str, output_key: str, data: bytes, expected_sha: str | None, expected_size: int | None) -> list[Finding]:
    out: list[Finding] = []
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha is not None and sha != expected_sha:
        out.append(Finding("manifest_mismatch", key, f"{output_key}: sha256 {sha[:16]}… but the manifest says "
                                                       f"{expected_sha[:16]}…"))
    if expected_size is not None and len(data) != expected_size:
        out.append(Finding("manifest_mismatch", key, f"{output_key}: {len(data)} bytes but the manifest says {expected_size}"))
    try:
        dec = imageio.decode(data, _DECODE_LIMIT)
    except imageio.ImageError as exc:
        out.append(Finding("undecodable", key, f"{output_key}: {exc}"))
        return out
    named = imageio.EXTENSIONS.get(posixpath.splitext(output_key)[1].lower())
    if named != dec.format:
        out.append(Finding("format", key, f"{output_key}: the content is {dec.format}, the name says {named}"))
    try:
        leaks = metadata_in(data)
    except Exception as exc:  # noqa: BLE001 - a file that cannot be scanned is not proven clean
        leaks = [f"cannot be scanned: {type(exc).__name__}: {exc}"]
    if leaks:
        out.append(Finding("metadata", key, f"{output_key}: " + "; ".join(leaks)))
    return out


def check_contents(release: Location, manifest: pa.Table, report_json: bytes | None = None,
                   listed: list[str] | None = None) -> VerifyResult:
    """The checks on a release's contents against its manifest (the manifest itself need not be written yet)."""
    result = VerifyResult(release.uri)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in manifest.column_names]
    if missing_cols:
        result.findings.append(Finding("manifest", MANIFEST, f"columns missing: {', '.join(missing_cols)}"))
        return result
    rows = manifest.to_pylist()
    result.objects = len(rows)
    if listed is None:
        listed, bad = _listing(release)
        result.findings += bad
    expected = {r["output_key"] for r in rows}
    files = _listed_files(manifest)
    # Nothing in the release that the manifest does not account for.
    for key in listed:
        if key in expected or key in (MANIFEST, SIGNATURE):
            continue
        if files is None and (key in REPORT_FILES or key.startswith(REPORT_PREFIXES)):
            continue
        if files is not None and key in files:
            continue
        result.findings.append(Finding("unlisted_object", key, "in the release but not in its manifest"))
    if files is None:
        result.warnings.append(Finding("warning:unhashed_files", MANIFEST, "the manifest lists no hashes of the "
                                                                           "report and Data Docs: they are not verified"))
    result.findings += _check_files(release, files if files is not None else {}, set(listed))
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        result.findings.append(Finding("manifest", MANIFEST, "a key appears more than once"))
    for r in rows:
        try:
            check_key(r["output_key"])
            if not r["output_key"].startswith(IMAGES):
                raise UnsafeKeyError(f"output key {r['output_key']!r} is not under {IMAGES}")
        except UnsafeKeyError as exc:
            result.findings.append(Finding("outside_release", r["key"], str(exc)))
    rows = [r for r in rows if not any(f.key == r["key"] and f.check == "outside_release" for f in result.findings)]
    present = set(listed)
    for r in rows:
        if r["output_key"] not in present:
            result.findings.append(Finding("missing_output", r["key"], f"{r['output_key']} is in the manifest but not in the release"))
    has_faces = "faces" in manifest.column_names

    def one(r: dict) -> list[Finding]:
        if r["output_key"] not in present:
            return []
        try:
            data = release.read_bytes(r["output_key"])
        except Exception as exc:  # noqa: BLE001
            return [Finding("missing_output", r["key"], f"{r['output_key']}: cannot be read: {type(exc).__name__}: {exc}")]
        found = check_output(r["key"], r["output_key"], data, r["output_sha256"], r["output_size"])
        unchanged = r["unchanged"] if "unchanged" in r else r.get("source_sha256") == r["output_sha256"]
        if unchanged:
            if has_faces and (r["faces"] or 0) > 0:
                found.append(Finding("unchanged_face", r["key"], f"{r['faces']} face(s) found, yet the output is "
                                                                  "byte-identical to the source"))
            elif not has_faces:
                found.append(Finding("warning:unchanged", r["key"], "output byte-identical to the source (the "
                                                                      "manifest has no faces column to tell whether it had faces)"))
        return found

    with ThreadPoolExecutor(_READERS) as pool:
        for found in pool.map(one, rows):
            for f in found:
                (result.warnings if f.check.startswith("warning:") else result.findings).append(f)
    by_hash: dict[str, list[str]] = {}
    for r in rows:
        by_hash.setdefault(r["output_sha256"], []).append(r["key"])
    result.duplicates = sorted(sorted(v) for v in by_hash.values() if len(v) > 1)
    if report_json is not None:
        result.findings += _check_report(report_json, manifest)
    return result


def _listed_files(manifest: pa.Table) -> dict[str, str] | None:
    raw = (manifest.schema.metadata or {}).get(FILES_META.encode())
    if raw is None:
        return None
    try:
        files = json.loads(raw)
    except ValueError:
        return {}
    return files if isinstance(files, dict) else {}


def with_file_hashes(manifest: pa.Table, files: dict[str, bytes]) -> pa.Table:
    """The manifest with the sha256 of every non-output file of the release (report, Data Docs) in its metadata."""
    meta = dict(manifest.schema.metadata or {})
    meta[FILES_META.encode()] = json.dumps({n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}).encode()
    return manifest.replace_schema_metadata(meta)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("img", "image", "source", "object", "embed", "iframe", "video", "picture", "input"):
            self.sources.append(f"<{tag}> " + " ".join(f"{k}={(v or '')[:40]}" for k, v in attrs if k != "alt"))
            src = dict(attrs).get("src") or dict(attrs).get("data") or ""
            if tag == "img" and src.startswith("data:image/png;base64,"):
                self.sources.pop()


def _content_findings(name: str, data: bytes) -> list[str]:
    """What a report file holds that it should not: report.html shows its PNG charts only, report.pdf is a PDF,
    a Data Docs page holds only great-expectations' own markup."""
    if name == "report.pdf" and not data.startswith(b"%PDF-"):
        return ["not a PDF"]
    if name == "report.html":
        parser = _Images()
        parser.feed(data.decode("utf-8", "replace"))
        return [f"embeds {s[:120]} (the report's images are PNG charts)" for s in parser.sources]
    if name == "report.json":
        try:
            json.loads(data)
        except ValueError as exc:
            return [f"not valid JSON: {exc}"]
    if name.startswith(REPORT_PREFIXES) and name.endswith(".html"):
        from anonymizer.validate import foreign_markup

        return foreign_markup(data)
    return []


def _check_files(release: Location, files: dict[str, str], present: set[str]) -> list[Finding]:
    out = []
    for name in sorted(set(files) | {n for n in present if n in REPORT_FILES}):
        if name not in present:
            out.append(Finding("report_files", name, "listed in the manifest but not in the release"))
            continue
        try:
            data = release.read_bytes(name)
        except Exception as exc:  # noqa: BLE001
            out.append(Finding("report_files", name, f"cannot be read: {type(exc).__name__}: {exc}"))
            continue
        if name in files and hashlib.sha256(data).hexdigest() != files[name]:
            out.append(Finding("report_files", name, "its sha256 is not the one the manifest records"))
        out += [Finding("report_files", name, f) for f in _content_findings(name, data)]
    return out


# ---- the manifest's signature ---------------------------------------------------------------------------

def manifest_bytes(manifest: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(manifest, sink)
    return sink.getvalue().to_pybytes()


def signing_key():
    """The Ed25519 private key $ANONYMIZER_SIGNING_KEY_FILE names (PEM), or None: releases are then unsigned."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if not path:
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(open(path, "rb").read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"${SIGNING_KEY_ENV} ({path}): not a readable, unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"${SIGNING_KEY_ENV} ({path}): an Ed25519 key is needed, not {type(key).__name__}")
    return key


def check_signature(manifest: bytes, signature: bytes | None, public_key_pem: bytes) -> list[Finding]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        return [Finding("signature", SIGNATURE, f"the public key is not a PEM public key: {exc}")]
    if not isinstance(key, Ed25519PublicKey):
        return [Finding("signature", SIGNATURE, f"the public key is {type(key).__name__}, not Ed25519")]
    if signature is None:
        return [Finding("signature", SIGNATURE, "missing: the manifest is not signed")]
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        return [Finding("signature", SIGNATURE, "does not match the manifest under this public key: the manifest "
                                                "was changed after it was signed, or another key signed it")]
    return []


def _check_report(report_json: bytes, manifest: pa.Table) -> list[Finding]:
    try:
        report = json.loads(report_json)
    except ValueError as exc:
        return [Finding("report", "report.json", f"not valid JSON: {exc}")]
    meta = {k.decode(): v.decode() for k, v in (manifest.schema.metadata or {}).items()}
    out = []
    if meta.get("report_sha256") and meta["report_sha256"] != hashlib.sha256(report_json).hexdigest():
        out.append(Finding("report", "report.json", "its sha256 is not the one the manifest records"))
    objects = report.get("objects")
    if isinstance(objects, list):
        shipped = {o["key"] for o in objects if o.get("status") in ("released", "carried")}
        in_manifest = set(manifest.column("key").to_pylist())
        for key in sorted(in_manifest - shipped):
            out.append(Finding("report", key, "in the manifest, but the report does not say it was released"))
        for key in sorted(shipped - in_manifest):
            out.append(Finding("report", key, "the report says released, but the manifest does not list it"))
    return out


def resolve(location: Location) -> Location:
    """DEST/<run id>/ as given, or the release DEST/LATEST names."""
    if not location.exists(MANIFEST) and location.exists(LATEST):
        return location.child(location.read_bytes(LATEST).decode().strip())
    return location


def verify_release(location: Location | str, public_key: str | None = None) -> VerifyResult:
    """`public_key`: a PEM Ed25519 public key file; the manifest's signature must then match it."""
    loc = resolve(Location.parse(location) if isinstance(location, str) else location)
    if not loc.exists(MANIFEST):
        return VerifyResult(loc.uri, findings=[Finding("manifest", MANIFEST, f"no {MANIFEST} at {loc.uri}: not a release")])
    raw = loc.read_bytes(MANIFEST)
    signature = loc.read_bytes(SIGNATURE) if loc.exists(SIGNATURE) else None
    try:
        manifest = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001
        return VerifyResult(loc.uri, findings=[Finding("manifest", MANIFEST, f"unreadable: {type(exc).__name__}: {exc}")])
    report = loc.read_bytes("report.json") if loc.exists("report.json") else None
    result = check_contents(loc, manifest, report)
    if public_key is not None:
        result.findings += check_signature(raw, signature, open(public_key, "rb").read())
    elif signature is not None:
        result.warnings.append(Finding("warning:signature_not_checked", SIGNATURE,
                                       "the manifest is signed; give --public-key to check the signature"))
    if report is None:
        result.findings.append(Finding("report", "report.json", "missing"))
    return result


# ---- command line ---------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="a release folder DEST/<run id> (or DEST: its LATEST), local or s3://")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--public-key", help="PEM Ed25519 public key: the manifest's signature must match it")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    result = verify_release(args.release, args.public_key)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for f in result.findings:
            print(f"FINDING {f.check}: {f.key}: {f.detail}")
        for w in result.warnings:
            print(f"warning {w.check.removeprefix('warning:')}: {w.key}: {w.detail}")
    state = "CLEAN" if result.passed else f"NOT CLEAN: {len(result.findings)} finding(s)"
    print(f"{state}: {result.objects} outputs checked in {result.release}", file=sys.stderr)
    if any(f.check == "manifest" and "not a release" in f.detail for f in result.findings):
        return exit_codes.USAGE
    return exit_codes.RELEASED if result.passed else exit_codes.QUARANTINED
