"""The policy file: which components run, with which parameters, and the thresholds a release must meet."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PolicyError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DetectorComponent(Component):
    weight: float = Field(1.0, gt=0)  # its vote when detections are fused (merge: wbf); unused by nms


class Detection(_Strict):
    detectors: list[DetectorComponent] = Field(min_length=1)
    merge: Literal["nms", "wbf"] = "nms"  # nms: union, duplicates suppressed; wbf: weighted box fusion
    merge_iou: float = Field(0.3, ge=0, le=1)
    min_score: float = Field(0.0, ge=0, le=1)  # wbf: the fused (vote-weighted) score a face needs
    vote_per_scale: bool = False  # wbf: each scale of a detector votes on its own
    auditor: Component


class Region(_Strict):
    expand: float = Field(1.35, ge=1.0, le=3.0)
    shape: Literal["ellipse", "box"] = "ellipse"
    feather: float = Field(0.15, ge=0.0, le=0.5)


class Anonymization(_Strict):
    operator: Component
    region: Region = Region()


class Measurement(_Strict):
    encoder: Component = Component(name="dlib_resnet")
    min_reid_face_px: int = Field(32, ge=1)
    covered_fraction: float = Field(0.5, gt=0, le=1)
    change_tolerance: int = Field(16, ge=0, le=255)
    mask_margin_px: int = Field(8, ge=0)
    # The landmark detector that re-finds each face before and after (pose kept, still detectable); null: off.
    pose_landmarks: Component | None = Component(name="yunet", params={"scales": [1.0], "score_threshold": 0.5})


class Thresholds(_Strict):
    same_person_distance: float = Field(0.6, gt=0)
    max_reid_rate: float = Field(ge=0, le=1)
    max_uncovered_faces: int = Field(ge=0)
    max_outside_changed_fraction: float = Field(ge=0, le=1)
    max_metadata_fields_left: int = Field(ge=0)
    max_failed_fraction: float = Field(ge=0, le=1)
    min_images: int = Field(1, ge=0)
    max_median_pose_error_deg: float | None = Field(None, gt=0)  # null: pose is measured, not gated
    min_redetected_fraction: float | None = Field(None, ge=0, le=1)  # null: detectability is measured, not gated


class Output(_Strict):
    jpeg_quality: int = Field(95, ge=1, le=100)
    webp_quality: int = Field(95, ge=1, le=100)
    max_pixels: int = Field(100_000_000, gt=0)


class Execution(_Strict):
    shard_size: int = Field(8, ge=1)
    workers: int | None = Field(None, ge=1)
    cpus_per_worker: float = Field(0.8, gt=0)


class Policy(_Strict):
    name: str
    seed: int = 0
    model_dir: str | None = None
    detection: Detection
    anonymization: Anonymization
    measurement: Measurement = Measurement()
    thresholds: Thresholds
    output: Output = Output()
    execution: Execution = Execution()
    text: str = Field("", exclude=True, repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def default_policy_text(profile: str = "default") -> str:
    return resources.files("anonymizer.policies").joinpath(f"{profile}.yaml").read_text()


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy {source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"policy {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Policy(**data, text=text)
    except ValidationError as exc:
        problems = "; ".join(f"key '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors())
        raise PolicyError(f"policy {source}: {problems}") from None


def load_policy(path: str | Path | None = None, profile: str = "default") -> Policy:
    """The policy file at `path`, else the embedded profile (policies/<profile>.yaml)."""
    if path is None:
        return parse_policy(default_policy_text(profile), profile)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"policy {path}: cannot read: {exc.strerror}") from exc
    return parse_policy(text, str(path))
