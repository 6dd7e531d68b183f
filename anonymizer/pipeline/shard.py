"""One shard: every image in it, outputs and metrics to staging, then a completion marker.

The marker is written last, so a shard with a marker is complete; a re-run with the same run id skips it.
In a keyed run the linking pass (anonymizer.pipeline.link) has already detected the shard's faces and
assigned their virtual identities (`link.parquet`): they are reused here, not detected again. Otherwise,
with `batch_detection` (a CUDA GPU's default), the shard's images are read, decoded and detected together
first (`detect_together`, up to DETECT_TOGETHER at a time): few large network calls instead of many small ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from anonymizer import imageio
from anonymizer.components import Components
from anonymizer.detect import Ensemble
from anonymizer.faces import Face
from anonymizer.logs import event
from anonymizer.pipeline.image import ImageResult, ImageSettings, anonymize_image
from anonymizer.policy import Policy
from anonymizer.storage import Location, ObjectTooLargeError, UnsafeKeyError
from anonymizer.vault import VaultWriter

DETECT_TOGETHER = 8  # images of a shard decoded and detected together at most (memory: decoded images)
# Bytes read for one object at most: 8 per allowed pixel (an uncompressed 16-bit RGBA image) plus headers,
# so that memory stays bounded even before the header is parsed.
BYTES_PER_PIXEL = 8


def max_bytes(max_pixels: int) -> int:
    return max_pixels * BYTES_PER_PIXEL + (1 << 20)

IMAGE_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.int32()), ("size", pa.int64()), ("sha256", pa.string()), ("error", pa.string()),
    ("format", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("mode", pa.string()),
    ("faces_detected", pa.int32()), ("faces_anonymized", pa.int32()), ("auditor_faces", pa.int32()),
    ("uncovered_faces", pa.int32()), ("reid_scored", pa.int32()),
    ("outside_changed_fraction", pa.float64()), ("masked_fraction", pa.float64()),
    ("metadata_fields_in", pa.int32()), ("metadata_fields_left", pa.int32()),
    ("output_sha256", pa.string()), ("output_size", pa.int64()),
    ("decode_s", pa.float64()), ("detect_s", pa.float64()), ("anonymize_s", pa.float64()), ("measure_s", pa.float64()),
    ("read_s", pa.float64()), ("write_s", pa.float64()), ("worker", pa.string()),
    ("version", pa.string()),  # of the bytes read (S3: the ETag of the GET), not the listing's
])
FACE_SCHEMA = pa.schema([
    ("key", pa.string()), ("face", pa.int32()), ("source", pa.string()), ("detector", pa.string()),
    ("score", pa.float64()), ("x", pa.float64()), ("y", pa.float64()), ("w", pa.float64()), ("h", pa.float64()),
    ("size", pa.float64()), ("method", pa.string()), ("reid_distance", pa.float64()),
    ("reid_distance_second", pa.float64()), ("covered", pa.bool_()),
    # Head pose (degrees) before and after, the largest absolute change, and whether the face was found again.
    ("yaw_before", pa.float64()), ("pitch_before", pa.float64()), ("roll_before", pa.float64()),
    ("yaw_after", pa.float64()), ("pitch_after", pa.float64()), ("roll_after", pa.float64()),
    ("pose_error", pa.float64()), ("redetected", pa.bool_()),
    ("virtual_identity", pa.int32()),  # keyed runs: the bank identity the face's person shows (null: none)
])
# A keyed run's per-shard detections, from the linking pass: one row per face, and one with a null `face`
# for an image without faces; `sha256` of the bytes the pass read (a changed object is not anonymized
# with another version's faces).
LINKS = "link.parquet"
LINK_SCHEMA = pa.schema([
    ("key", pa.string()), ("sha256", pa.string()), ("face", pa.int32()), ("x", pa.float64()), ("y", pa.float64()),
    ("w", pa.float64()), ("h", pa.float64()), ("score", pa.float64()), ("detector", pa.string()),
    ("landmarks", pa.list_(pa.float64())), ("virtual_identity", pa.int32()),
])


@dataclass
class Linked:
    """An image's faces as the linking pass found them, each with its virtual identity (or None)."""
    sha256: str
    faces: list[Face]


def read_links(staging: Location, shard_id: int) -> dict[str, Linked]:
    """The shard's linked detections by key; empty when the run is not keyed."""
    where = shard_dir(staging, shard_id)
    if not where.exists(LINKS):
        return {}
    out: dict[str, Linked] = {}
    for r in where.read_table(LINKS).sort_by([("key", "ascending"), ("face", "ascending")]).to_pylist():
        linked = out.setdefault(r["key"], Linked(r["sha256"], []))
        if r["face"] is not None:
            pts = None if r["landmarks"] is None else np.asarray(r["landmarks"], np.float32).reshape(-1, 2)
            linked.faces.append(Face(r["x"], r["y"], r["w"], r["h"], r["score"], r["detector"], pts,
                                     r["virtual_identity"]))
    return out


def read_source(source: Location, key: str, max_pixels: int) -> tuple[bytes | None, str | None, str | None]:
    """(the object's bytes, their version, None), or (None, None, why it could not be read)."""
    try:
        data, version = source.read_with_version(key, max_bytes=max_bytes(max_pixels))
    except (ObjectTooLargeError, UnsafeKeyError) as exc:
        return None, None, f"refused before reading: {exc}"
    except Exception as exc:  # noqa: BLE001 - an unreadable object is quarantined, not fatal
        return None, None, (f"storage error: cannot read the source object after retries: "
                            f"{type(exc).__name__}: {exc}")
    return data, version, None


@dataclass
class Fetched:
    """An object as read; with `detect_together`, also decoded and its faces found."""
    data: bytes
    version: str | None
    read_s: float
    image: imageio.Decoded | None = None
    faces: list[Face] | None = None
    decode_s: float = 0.0
    detect_s: float = 0.0


def fetch(source: Location, key: str, max_pixels: int) -> Fetched | str:
    """The object's bytes, or why they could not be read."""
    t0 = time.perf_counter()
    data, version, refused = read_source(source, key, max_pixels)
    return refused or Fetched(data, version, time.perf_counter() - t0)


def detect_together(source: Location, keys: list[str], max_pixels: int, detector: Ensemble, worker: str
                    ) -> dict[str, Fetched | str]:
    """Every object read, decoded and detected in one `detect_batch` (on a GPU: few large calls). An object
    that cannot be decoded is left to the caller, which records why; should the batch fail, each image is
    left to be detected alone."""
    fetched = {key: fetch(source, key, max_pixels) for key in keys}
    ready = []
    for key, f in fetched.items():
        if isinstance(f, Fetched):
            t0 = time.perf_counter()
            try:  # the caller checks the extension, as for an image detected alone
                f.image = imageio.decode(f.data, max_pixels)
            except Exception:  # noqa: BLE001 - recorded where the image is used
                continue
            f.decode_s = time.perf_counter() - t0
            ready.append(f)
    if ready:
        t0 = time.perf_counter()
        try:
            found = detector.detect_batch([f.image.rgb for f in ready])
        except Exception as exc:  # noqa: BLE001 - detected one by one instead
            event("shard.batch_detection_failed", worker=worker, error=f"{type(exc).__name__}: {exc}")
            return fetched
        share = (time.perf_counter() - t0) / len(ready)
        for f, faces in zip(ready, found):
            f.faces, f.detect_s = faces, share
    return fetched


def shard_dir(staging: Location, shard_id: int) -> Location:
    return staging.child("shards", f"{shard_id:06d}")


def is_done(staging: Location, shard_id: int, marker: str = "_SUCCESS") -> bool:
    return shard_dir(staging, shard_id).exists(marker)


class ShardWorker:
    """Loads the policy's models once and runs shards with them; Ray wraps it as an actor, the local
    executor calls it directly."""

    MARKER = "_SUCCESS"

    def __init__(self, policy: Policy, source: Location, staging: Location, worker: str = "local",
                 vault: VaultWriter | None = None) -> None:
        self.settings = replace(ImageSettings.from_policy(policy), keep_originals=vault is not None)
        self.components = Components.from_policy(policy)
        self.source, self.staging, self.worker, self.vault = source, staging, worker, vault

    def read_and_anonymize(self, key: str, linked: Linked | None = None, fetched: Fetched | str | None = None
                           ) -> ImageResult:
        fetched = fetch(self.source, key, self.settings.max_pixels) if fetched is None else fetched
        if isinstance(fetched, str):
            return ImageResult(None, {"key": key, "error": fetched})
        data, max_pixels = fetched.data, self.settings.max_pixels
        sha = hashlib.sha256(data).hexdigest()
        try:
            imageio.check_extension(key, data, max_pixels)
            if linked is not None and linked.sha256 != sha:
                raise imageio.ImageError(f"{key}: the object changed between the linking pass and anonymization "
                                         "(another sha256): run again")
        except imageio.ImageError as exc:
            result = ImageResult(None, {"key": key, "size": len(data), "sha256": sha, "error": str(exc)})
        else:
            result = anonymize_image(key, data, self.settings, self.components,
                                     faces=linked.faces if linked is not None else fetched.faces, image=fetched.image)
            if fetched.image is not None:  # decoded, and detected unless the batch failed, beforehand
                result.image.update(decode_s=fetched.decode_s, **({} if fetched.faces is None else
                                                                    {"detect_s": fetched.detect_s}))
        t1 = time.perf_counter()
        if result.output is not None:
            outputs = self.staging.child("outputs")
            outputs.write_bytes(key, result.output)
            # Integrity: read the object back; a mismatch quarantines the image instead of releasing it.
            if hashlib.sha256(outputs.read_bytes(key)).hexdigest() != result.image["output_sha256"]:
                result.image["error"] = "integrity: the staged output does not match what was written"
        result.image.update(read_s=fetched.read_s, write_s=time.perf_counter() - t1, worker=self.worker,
                            version=fetched.version)
        return result

    def run_shard(self, shard_id: int, keys: list[str]) -> dict:
        t0 = time.perf_counter()
        out = shard_dir(self.staging, shard_id)
        # Counted before the work: an attempt that dies mid-shard still shows as a retry in the report.
        attempts = int(out.read_bytes("_ATTEMPTS")) + 1 if out.exists("_ATTEMPTS") else 1
        out.write_bytes("_ATTEMPTS", str(attempts).encode())
        images, faces = [], []
        linked = read_links(self.staging, shard_id)
        together: dict[str, Fetched | str] = {}
        for i, key in enumerate(keys):
            if self.components.batch_detection and not linked and i % DETECT_TOGETHER == 0:
                together = detect_together(self.source, keys[i:i + DETECT_TOGETHER], self.settings.max_pixels,
                                           self.components.detector, self.worker)
            r = self.read_and_anonymize(key, linked.get(key), together.pop(key, None))
            if self.vault is not None and r.output is not None:
                for face, box, pixels in r.originals:
                    self.vault.add(key, face, box, pixels, r.image["output_sha256"])
            images.append({**r.image, "shard": shard_id})
            faces.extend(r.faces)
        out.write_table("images.parquet", pa.Table.from_pylist(images, schema=IMAGE_SCHEMA))
        out.write_table("faces.parquet", pa.Table.from_pylist(faces, schema=FACE_SCHEMA))
        summary = {
            "shard": shard_id, "images": len(images), "failed": sum(1 for i in images if i.get("error")),
            "faces": sum(1 for f in faces if f["source"] == "primary"), "seconds": time.perf_counter() - t0,
            "worker": self.worker, "attempts": attempts,
        }
        if self.vault is not None:
            self.vault.stage(f"{shard_id:06d}")  # before the marker: a completed shard's originals are staged
        out.write_bytes("_SUCCESS", json.dumps(summary).encode())
        return summary
