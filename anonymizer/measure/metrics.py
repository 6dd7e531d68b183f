"""Per-image and per-face measurements of one anonymized image, against its original."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymizer.regions import Anonymized, union_mask
from anonymizer.faces import Face
from anonymizer.measure.encoder import FaceEncoder


@dataclass(frozen=True)
class MeasureSettings:
    min_reid_face_px: int
    covered_fraction: float
    change_tolerance: int
    mask_margin_px: int


def reid_distances(encoder: FaceEncoder, original: np.ndarray, anonymized: np.ndarray, faces: list[Face],
                   min_face_px: int) -> list[float | None]:
    """Naive attack: embed the original face and the same aligned region after anonymization.

    The alignment found on the original is reused on the anonymized image: the attacker gets the best
    possible crop, which makes the measured distance a conservative (small) one.
    """
    scored = [i for i, f in enumerate(faces) if f.size >= min_face_px]
    out: list[float | None] = [None] * len(faces)
    if not scored:
        return out
    alignments = encoder.align(original, [faces[i] for i in scored])
    a = encoder.embed(original, alignments)
    b = encoder.embed(anonymized, alignments)
    for i, d in zip(scored, np.linalg.norm(a - b, axis=1)):
        out[i] = float(d)
    return out


def uncovered(auditor_faces: list[Face], mask: np.ndarray, covered_fraction: float) -> list[bool]:
    """An auditor face is uncovered when less than `covered_fraction` of its box is anonymized."""
    h, w = mask.shape
    flags = []
    for f in auditor_faces:
        x0, y0 = max(0, int(f.x)), max(0, int(f.y))
        x1, y1 = min(w, int(np.ceil(f.x + f.w))), min(h, int(np.ceil(f.y + f.h)))
        window = mask[y0:y1, x0:x1]
        share = float((window >= 0.5).mean()) if window.size else 1.0
        flags.append(share < covered_fraction)
    return flags


def outside_changed_fraction(original: np.ndarray, released: np.ndarray, mask: np.ndarray, tolerance: int,
                             margin_px: int) -> float:
    """Share of pixels outside the (margin-grown) masks that differ beyond codec noise."""
    touched = (mask > 0).astype(np.uint8)
    if margin_px:
        touched = cv2.dilate(touched, np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8))
    outside = touched == 0
    if not outside.any():
        return 0.0
    diff = np.abs(original.astype(np.int16) - released.astype(np.int16)).max(axis=2)
    return float((diff[outside] > tolerance).mean())


def image_measurements(result: Anonymized, original: np.ndarray, released: np.ndarray, auditor_faces: list[Face],
                       settings: MeasureSettings) -> tuple[dict, list[bool]]:
    mask = union_mask(result.masks, original.shape[:2])
    flags = uncovered(auditor_faces, mask, settings.covered_fraction)
    return {
        "auditor_faces": len(auditor_faces),
        "uncovered_faces": int(sum(flags)),
        "outside_changed_fraction": outside_changed_fraction(
            original, released, mask, settings.change_tolerance, settings.mask_margin_px),
        "masked_fraction": float((mask > 0).mean()),
    }, flags
