"""One record per anonymized face region: the original pixels of its window, sealed with AES-256-GCM.

The plaintext is the window's pixels as a lossless PNG (byte-exact back, a fraction of the raw size). The
associated data binds the ciphertext to (run id, image key, face index, window box, channels, released
output's sha256): a record moved to another image, run, face or output, or given another box, fails its
tag. The commit seal (a GMAC over every record's associated data and nonce) makes a removed, added or
duplicated record detectable too, which per-record tags alone cannot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anonymizer.storage import check_key
from anonymizer.vault.errors import TamperedRecordError

FORMAT = "anonymizer-vault/1"
NONCE_BYTES = 12
_SHA256 = re.compile(r"[0-9a-f]{64}")

SCHEMA = pa.schema([
    ("image_key", pa.string()),
    ("face_index", pa.int32()),
    ("x0", pa.int32()), ("y0", pa.int32()), ("w", pa.int32()), ("h", pa.int32()),
    ("channels", pa.int8()),
    ("output_sha256", pa.string()),
    ("nonce", pa.binary()),
    ("ciphertext", pa.binary()),  # PNG bytes encrypted, with the 16-byte GCM tag
])


@dataclass(frozen=True)
class Box:
    """The face region's window in image pixels: top-left corner and size."""

    x0: int
    y0: int
    w: int
    h: int

    @classmethod
    def of(cls, box) -> "Box":
        if isinstance(box, Box):
            return box
        try:
            x0, y0, w, h = (int(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"box {box!r}: expected (x0, y0, w, h) integers") from None
        if x0 < 0 or y0 < 0 or w <= 0 or h <= 0:
            raise ValueError(f"box {box!r}: x0, y0 must be >= 0 and w, h > 0")
        return cls(x0, y0, w, h)

    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


def associated_data(run_id: str, image_key: str, face_index: int, box: Box, channels: int, output_sha256: str) -> bytes:
    fields = {"v": FORMAT, "run": run_id, "key": image_key, "face": face_index,
              "box": [box.x0, box.y0, box.w, box.h], "c": channels, "sha": output_sha256}
    return b"record\0" + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _encode_pixels(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("the face pixels cannot be encoded as PNG")
    return buf.tobytes()


def _decode_pixels(data: bytes, box: Box, channels: int) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is not None and pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape != (box.h, box.w, channels):
        raise ValueError("decrypted pixels do not have the record's shape")
    return pixels


def check_pixels(pixels: np.ndarray, box: Box, image_key: str, face_index: int) -> np.ndarray:
    where = f"{image_key} face {face_index}"
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise ValueError(f"{where}: pixels must be a uint8 numpy array")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: pixels must be H×W×C with C in 1, 3, 4, not {pixels.shape}")
    if pixels.shape[:2] != (box.h, box.w):
        raise ValueError(f"{where}: pixels are {pixels.shape[1]}×{pixels.shape[0]} but the box is {box.w}×{box.h}")
    return pixels


def seal_record(aead: AESGCM, run_id: str, image_key: str, face_index: int, box, pixels: np.ndarray,
                output_sha256: str) -> dict:
    """A row of SCHEMA holding the window's pixels encrypted under the run's data key."""
    check_key(image_key)
    if not isinstance(face_index, (int, np.integer)) or face_index < 0:
        raise ValueError(f"{image_key}: face index must be an integer >= 0, not {face_index!r}")
    if not isinstance(output_sha256, str) or not _SHA256.fullmatch(output_sha256):
        raise ValueError(f"{image_key}: output_sha256 must be 64 lowercase hex digits, not {output_sha256!r}")
    box = Box.of(box)
    pixels = check_pixels(pixels, box, image_key, int(face_index))
    channels = pixels.shape[2]
    nonce = os.urandom(NONCE_BYTES)
    ad = associated_data(run_id, image_key, int(face_index), box, channels, output_sha256)
    return {"image_key": image_key, "face_index": int(face_index), "x0": box.x0, "y0": box.y0, "w": box.w,
            "h": box.h, "channels": channels, "output_sha256": output_sha256, "nonce": nonce,
            "ciphertext": aead.encrypt(nonce, _encode_pixels(np.ascontiguousarray(pixels)), ad)}


def open_record(aead: AESGCM, run_id: str, row: dict) -> np.ndarray:
    """The window's original pixels (H×W×C uint8); TamperedRecordError naming the image if the tag fails."""
    box = Box(row["x0"], row["y0"], row["w"], row["h"])
    ad = associated_data(run_id, row["image_key"], row["face_index"], box, row["channels"], row["output_sha256"])
    try:
        plain = aead.decrypt(row["nonce"], row["ciphertext"], ad)
    except (InvalidTag, ValueError):
        raise TamperedRecordError(f"{row['image_key']}: face {row['face_index']}'s vault record fails its "
                                  f"authentication tag (run {run_id}): tampered or corrupted") from None
    try:
        return _decode_pixels(plain, box, row["channels"])
    except ValueError as exc:
        raise TamperedRecordError(f"{row['image_key']}: face {row['face_index']}: {exc}") from None


def _digest(run_id: str, table: pa.Table) -> bytes:
    """The record set, order-free: every record's associated data and nonce, sorted."""
    cols = table.select([f for f in SCHEMA.names if f != "ciphertext"]).to_pylist()
    items = sorted(associated_data(run_id, r["image_key"], r["face_index"], Box(r["x0"], r["y0"], r["w"], r["h"]),
                                   r["channels"], r["output_sha256"]) + b"\0" + r["nonce"] for r in cols)
    h = hashlib.sha256(b"records\0" + run_id.encode() + b"\0" + str(len(items)).encode())
    for item in items:
        h.update(len(item).to_bytes(4, "big") + item)
    return h.digest()


def seal_set(aead: AESGCM, run_id: str, table: pa.Table) -> dict:
    nonce = os.urandom(NONCE_BYTES)
    tag = aead.encrypt(nonce, b"", b"set\0" + _digest(run_id, table))
    return {"seal_nonce": nonce.hex(), "seal": tag.hex()}


def check_set(aead: AESGCM, run_id: str, table: pa.Table, marker: dict) -> None:
    try:
        nonce, tag = bytes.fromhex(marker["seal_nonce"]), bytes.fromhex(marker["seal"])
        aead.decrypt(nonce, tag, b"set\0" + _digest(run_id, table))
    except (InvalidTag, KeyError, ValueError):
        raise TamperedRecordError(f"run {run_id}: the vault's record set is not the one committed ({len(table)} "
                                  f"records now, {marker.get('records')} committed): records were removed, added "
                                  "or altered") from None
