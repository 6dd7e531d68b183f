"""One image through decode → detect → anonymize → encode → measure: the unit every executor calls.

The local executor, the Ray actors, the benchmarks and the tests all call `anonymize_image`, so they
measure the same code. It takes `ImageSettings`, the few policy values one image needs, not the policy.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from anonymizer import imageio
from anonymizer.anonymize import face_rngs
from anonymizer.components import Components
from anonymizer.faces import Face
from anonymizer.measure.metrics import MeasureSettings, image_measurements, reid_distances
from anonymizer.measure.pose import POSE_COLUMNS
from anonymizer.policy import Policy


@dataclass(frozen=True)
class ImageSettings:
    seed: int
    max_pixels: int
    jpeg_quality: int
    webp_quality: int
    measure: MeasureSettings
    keep_originals: bool = False  # return each face window's original pixels (for the recovery vault)

    @classmethod
    def from_policy(cls, policy: Policy) -> "ImageSettings":
        o, m = policy.output, policy.measurement
        return cls(policy.seed, o.max_pixels, o.jpeg_quality, o.webp_quality,
                   MeasureSettings(m.min_reid_face_px, m.covered_fraction, m.change_tolerance, m.mask_margin_px))


@dataclass
class ImageResult:
    output: bytes | None
    image: dict
    faces: list[dict] = field(default_factory=list)
    # (face index, window (x0, y0, w, h), the window's original pixels) when settings.keep_originals
    originals: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = field(default_factory=list)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def anonymize_image(key: str, data: bytes, settings: ImageSettings, components: Components,
                    faces: list[Face] | None = None, image: imageio.Decoded | None = None) -> ImageResult:
    """Never raises for a bad object: the failure is recorded as the image's error and the run goes on.
    `faces`: detected already (a keyed run's linking pass, or the shard's images detected together), so not
    detected again; `image`: `data` decoded already."""
    row: dict = {"key": key, "size": len(data), "sha256": _sha(data), "error": None}
    try:
        return _anonymize_and_measure(key, data, settings, components, row, faces, image)
    except imageio.ImageError as exc:
        row["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one image must not stop the run
        row["error"] = f"internal error: {type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=5)
    return ImageResult(None, row)


def _anonymize_and_measure(key: str, data: bytes, s: ImageSettings, c: Components, row: dict,
                           faces: list[Face] | None, image: imageio.Decoded | None) -> ImageResult:
    t0 = time.perf_counter()
    img = image or imageio.decode(data, s.max_pixels)
    row.update(format=img.format, width=img.size[0], height=img.size[1], mode=img.mode,
               metadata_fields_in=sum(imageio.metadata_fields(data).values()))
    t1 = time.perf_counter()
    if faces is None:
        faces = c.detector.detect(img.rgb)
    t2 = time.perf_counter()
    result = c.anonymizer.anonymize(img.rgb, faces, face_rngs(s.seed, key, len(faces)))
    output = imageio.encode(result.image, img, s.jpeg_quality, s.webp_quality)
    t3 = time.perf_counter()
    released = imageio.decode(output, s.max_pixels).rgb
    auditor_faces = c.auditor.detect(img.rgb)
    m = s.measure
    per_image, uncovered_flags = image_measurements(result, img.rgb, released, auditor_faces, m)
    distances = reid_distances(c.encoder, img.rgb, released, faces, m.min_reid_face_px)
    second = (reid_distances(c.second_encoder, img.rgb, released, faces, m.min_reid_face_px) if c.second_encoder
              else [None] * len(faces))
    # Pose and re-detection measure the replacement: a face the operator left to its fallback (blurred on
    # purpose) has no replacement pose to keep.
    poses: list = [None] * len(faces)
    replaced = [i for i, method in enumerate(result.methods) if not method.startswith("fallback")]
    if c.pose_meter and replaced:
        for i, p in zip(replaced, c.pose_meter.measure(img.rgb, released, [faces[i] for i in replaced],
                                                       m.min_reid_face_px)):
            poses[i] = p
    t4 = time.perf_counter()
    row.update(
        faces_detected=len(faces),
        faces_anonymized=sum(1 for mk in result.masks if mk.alpha.size),
        reid_scored=sum(d is not None for d in distances),
        metadata_fields_left=sum(imageio.metadata_fields(output).values()),
        output_sha256=_sha(output),
        output_size=len(output),
        decode_s=t1 - t0, detect_s=t2 - t1, anonymize_s=t3 - t2, measure_s=t4 - t3,
        **per_image,
    )
    face_rows = [
        {"key": key, "face": i, "source": "primary", "detector": f.detector, "score": f.score,
         "x": f.x, "y": f.y, "w": f.w, "h": f.h, "size": f.size, "method": method,
         "reid_distance": d, "reid_distance_second": d2, "covered": True,
         "virtual_identity": None if method.startswith("fallback") else f.identity,
         **(p.row() if p else dict.fromkeys(POSE_COLUMNS))}
        for i, (f, method, d, d2, p) in enumerate(zip(faces, result.methods, distances, second, poses))
    ] + [
        {"key": key, "face": i, "source": "auditor", "detector": f.detector, "score": f.score,
         "x": f.x, "y": f.y, "w": f.w, "h": f.h, "size": f.size, "method": None,
         "reid_distance": None, "reid_distance_second": None, "covered": not unc, **dict.fromkeys(POSE_COLUMNS)}
        for i, (f, unc) in enumerate(zip(auditor_faces, uncovered_flags))
    ]
    originals = [(i, (mk.x0, mk.y0, mk.alpha.shape[1], mk.alpha.shape[0]), img.rgb[mk.window].copy())
                 for i, mk in enumerate(result.masks) if mk.alpha.size] if s.keep_originals else []
    return ImageResult(output, row, face_rows, originals)
