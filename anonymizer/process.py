"""One image through detect → anonymize → encode → measure: the unit every executor calls.

Ray actors, the plain benchmark loop and the tests all call `process_image`, so they measure the same code.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass, field

from anonymizer import imageio
from anonymizer.anonymize import ANONYMIZERS, Anonymizer, face_rngs
from anonymizer.detect import Detector, Ensemble, build_detector, build_ensemble
from anonymizer.measure.encoder import FaceEncoder, build_encoder, encoder_inventory
from anonymizer.measure.metrics import MeasureSettings, image_measurements, reid_distances
from anonymizer.measure.pose import POSE_COLUMNS, PoseMeter
from anonymizer.models import describe
from anonymizer.policy import Policy


@dataclass
class Components:
    """The models a worker loads once and reuses for every image."""

    detector: Ensemble
    auditor: Detector
    anonymizer: Anonymizer
    encoder: FaceEncoder
    pose_meter: PoseMeter | None = None

    @classmethod
    def from_policy(cls, policy: Policy) -> "Components":
        d = policy.detection
        pose = policy.measurement.pose_landmarks
        return cls(
            detector=build_ensemble(d, policy.model_dir),
            auditor=build_detector(d.auditor.name, d.auditor.params, policy.model_dir),
            anonymizer=build_operator(policy),
            encoder=build_encoder(policy.measurement.encoder.name, policy.measurement.encoder.params, policy.model_dir),
            pose_meter=PoseMeter(build_detector(pose.name, pose.params, policy.model_dir)) if pose else None,
        )


def build_operator(policy: Policy, name: str | None = None, strength: float | None = None, **overrides) -> Anonymizer:
    """An operator as the pipeline builds it, with the policy's region settings: the policy's own, or `name`
    (evaluations) at `strength`. The policy's own operator keeps its params (the generator's weights, its
    identity guard); the generator takes no strength. Only the generator loads weights, so only it is given
    the policy's model_dir."""
    a = policy.anonymization
    name = name or a.operator.name
    params = dict(a.operator.params) if name == a.operator.name else {}
    if strength is not None and name != "generated":
        params["strength"] = strength
    params.update(overrides)
    if name == "generated":
        params.setdefault("model_dir", policy.model_dir)
    return ANONYMIZERS.create(name, **params, **a.region.model_dump())


def model_inventory(policy: Policy) -> list[dict]:
    """Every weight file the policy's components load, with its sha256, for the audit report."""
    files = {"yunet": ["yunet"], "retinaface": ["retinaface"], "centerface": ["centerface"], "dlib_cnn": ["dlib_cnn"]}
    out = []
    pose = policy.measurement.pose_landmarks
    for n in ([c.name for c in policy.detection.detectors] + [policy.detection.auditor.name]
              + ([pose.name] if pose else [])):
        out += [{"component": n, **describe(m, policy.model_dir)} for m in files.get(n, [])]
        if n == "dlib_hog":
            out.append({"component": n, "name": "dlib_hog", "file": "(built into dlib)", "sha256": None, "licence": "Boost"})
    op = policy.anonymization.operator
    if op.name == "generated":
        from anonymizer.generate.anonymizer import weights_inventory

        out.append(weights_inventory(op.params.get("weights", "generator"), policy.model_dir))
        guard = op.params.get("identity_guard")
        if guard:  # the recognizer that vets each generated face, when it is not the measurement's own
            g = (guard.get("encoder", "dlib_resnet"), guard.get("encoder_params", {}))
            if g != (policy.measurement.encoder.name, policy.measurement.encoder.params):
                out += [dict(r, component=f"identity_guard:{r['component']}")
                        for r in encoder_inventory(*g, policy.model_dir)]
    enc = policy.measurement.encoder
    return out + encoder_inventory(enc.name, enc.params, policy.model_dir)


@dataclass
class ImageResult:
    output: bytes | None
    image: dict
    faces: list[dict] = field(default_factory=list)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def process_image(key: str, data: bytes, policy: Policy, components: Components) -> ImageResult:
    """Never raises for a bad object: the failure is recorded as the image's error and the run goes on."""
    row: dict = {"key": key, "size": len(data), "sha256": _sha(data), "error": None}
    try:
        return _process(key, data, policy, components, row)
    except imageio.ImageError as exc:
        row["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one image must not stop the run
        row["error"] = f"internal error: {type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=5)
    return ImageResult(None, row)


def _process(key: str, data: bytes, policy: Policy, c: Components, row: dict) -> ImageResult:
    t0 = time.perf_counter()
    img = imageio.decode(data, policy.output.max_pixels)
    row.update(format=img.format, width=img.size[0], height=img.size[1], mode=img.mode,
               metadata_fields_in=sum(imageio.metadata_fields(data).values()))
    t1 = time.perf_counter()
    faces = c.detector.detect(img.rgb)
    t2 = time.perf_counter()
    result = c.anonymizer.anonymize(img.rgb, faces, face_rngs(policy.seed, key, len(faces)))
    output = imageio.encode(result.image, img, policy.output.jpeg_quality, policy.output.webp_quality)
    t3 = time.perf_counter()
    released = imageio.decode(output, policy.output.max_pixels).rgb
    auditor_faces = c.auditor.detect(img.rgb)
    m = policy.measurement
    per_image, uncovered_flags = image_measurements(
        result, img.rgb, released, auditor_faces,
        MeasureSettings(m.min_reid_face_px, m.covered_fraction, m.change_tolerance, m.mask_margin_px))
    distances = reid_distances(c.encoder, img.rgb, released, faces, m.min_reid_face_px)
    poses = (c.pose_meter.measure(img.rgb, released, faces, m.min_reid_face_px) if c.pose_meter
             else [None] * len(faces))
    t4 = time.perf_counter()
    same = policy.thresholds.same_person_distance
    scored = [d for d in distances if d is not None]
    row.update(
        faces_detected=len(faces),
        faces_anonymized=sum(1 for mk in result.masks if mk.alpha.size),
        reid_scored=len(scored),
        reid_matches=sum(d < same for d in scored),
        metadata_fields_left=sum(imageio.metadata_fields(output).values()),
        output_sha256=_sha(output),
        output_size=len(output),
        decode_s=t1 - t0, detect_s=t2 - t1, anonymize_s=t3 - t2, measure_s=t4 - t3,
        **per_image,
    )
    face_rows = [
        {"key": key, "face": i, "source": "primary", "detector": f.detector, "score": f.score,
         "x": f.x, "y": f.y, "w": f.w, "h": f.h, "size": f.size, "method": method,
         "reid_distance": d, "covered": True, **(p.row() if p else dict.fromkeys(POSE_COLUMNS))}
        for i, (f, method, d, p) in enumerate(zip(faces, result.methods, distances, poses))
    ] + [
        {"key": key, "face": i, "source": "auditor", "detector": f.detector, "score": f.score,
         "x": f.x, "y": f.y, "w": f.w, "h": f.h, "size": f.size, "method": None,
         "reid_distance": None, "covered": not unc, **dict.fromkeys(POSE_COLUMNS)}
        for i, (f, unc) in enumerate(zip(auditor_faces, uncovered_flags))
    ]
    return ImageResult(output, row, face_rows)
