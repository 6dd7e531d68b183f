"""IdentityGuard: a generated face is kept only if a face recognizer no longer matches it to the original.

Why: the generator never sees the face's pixels, but each face is one random draw, and a draw can land
close to the person by chance: the context it keeps (hair, head shape, skin tone, glasses) is part of what
a recognizer matches on. The release gate measures exactly that and would quarantine the whole dataset
for a few such faces. The guard decides per face, before release: it tries up to `candidates` latents,
drawn from the face's own RNG (so the output is still fixed by run seed, image key and face index), and
keeps the first whose embedding is at least `min_distance` from the original's and, when
`max_pose_error_deg` is set, whose head pose is that close to the original's. If no draw is far enough
from the person, the face gets the classical fallback; if some are but none keeps the pose, the one that
keeps it best is used (pose is utility, identity is privacy).

What it sees: the guard embeds the original face (as the release gate does); the generator still sees only
the context. Choosing among K draws can tell the output at most log2(K) bits about the original, and the
choice only pushes it away from the person. Measured against the same recognizer, the guard's effect on
re-identification is by construction: an attacker with a different recognizer is the honest test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anonymizer.faces import Face, context_window
from anonymizer.headpose import Pose
from anonymizer.measure.pose import PoseChange, PoseMeter
from anonymizer.regions import FaceMask


class IdentityGuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: int = Field(4, ge=1, le=64)      # latents tried per face before the fallback
    # Embedding distance a kept face must reach. Above the encoder's own same-person distance (dlib: 0.6),
    # with a margin for the release's JPEG round trip.
    min_distance: float = Field(0.65, gt=0)
    encoder: str = "dlib_resnet"
    encoder_params: dict[str, Any] = Field(default_factory=dict)
    # Largest of |Δyaw|, |Δpitch|, |Δroll| (degrees, landmarks re-found by YuNet) a kept face may have;
    # null: identity only.
    max_pose_error_deg: float | None = Field(None, gt=0)


@dataclass
class Reference:
    """The original face as the guard measures it, in a window of one box side around the face (which also
    holds the face's region, so a candidate can be composited into it)."""

    window: tuple[int, int, int, int]  # x0, y0, x1, y1 in the image
    face: Face                         # in window coordinates
    alignment: Any
    embedding: np.ndarray
    pose: Pose | None


@dataclass(frozen=True)
class Decision:
    pose_error: float | None  # None: not measured, or no face re-found in the candidate
    identity_ok: bool
    pose_ok: bool

    @property
    def accepted(self) -> bool:
        return self.identity_ok and self.pose_ok


class IdentityGuard:
    def __init__(self, config: IdentityGuardConfig, model_dir: str | None = None) -> None:
        from anonymizer.measure.encoder import build_encoder

        self.config = config
        self.references = self.judged = 0  # faces vetted and draws judged: draws per face is the guard's cost
        self.encoder = build_encoder(config.encoder, config.encoder_params, model_dir)
        self.pose_meter = None
        if config.max_pose_error_deg is not None:
            from anonymizer.detect import build_detector

            self.pose_meter = PoseMeter(build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}, model_dir))

    @property
    def candidates(self) -> int:
        return self.config.candidates

    def reference(self, original: np.ndarray, face: Face, region: FaceMask) -> Reference:
        self.references += 1
        x0, y0, x1, y1 = context_window(face, original.shape[:2], cover=region.box)
        lm = None if face.landmarks is None else np.asarray(face.landmarks, np.float64) - (x0, y0)
        local = Face(face.x - x0, face.y - y0, face.w, face.h, face.score, face.detector, lm)
        patch = np.ascontiguousarray(original[y0:y1, x0:x1])
        alignment = self.encoder.align(patch, [local])
        embedding = self.encoder.embed(patch, alignment)[0]
        pose = self.pose_meter.pose(patch, local, lm) if self.pose_meter else None
        return Reference((x0, y0, x1, y1), local, alignment, embedding, pose)

    def judge(self, ref: Reference, candidate: np.ndarray) -> Decision:
        """`candidate`: the window `ref.window` with the generated face composited in."""
        self.judged += 1
        candidate = np.ascontiguousarray(candidate)
        distance = float(np.linalg.norm(self.encoder.embed(candidate, ref.alignment)[0] - ref.embedding))
        identity_ok = distance >= self.config.min_distance
        # Pose is only worth measuring on a draw identity allows, and where the original has a pose to keep.
        if self.pose_meter is None or not identity_ok or ref.pose is None:
            return Decision(None, identity_ok, True)
        error = PoseChange(ref.pose, self.pose_meter.pose(candidate, ref.face)).error
        # None: the candidate is not found as a face again, which fails the pose check too
        return Decision(error, identity_ok, error is not None and error <= self.config.max_pose_error_deg)
