"""The composition root: a policy names its parts; this builds them and lists the weight files they load.

Each component reports its own weight files: a class attribute `MODELS` (names in anonymizer.models) or a
`weight_files(params, model_dir)` static method where the files depend on the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from anonymizer.anonymize import ANONYMIZERS, Anonymizer
from anonymizer.detect import DETECTORS, Detector, Ensemble, build_detector, build_ensemble
from anonymizer.measure.encoder import ENCODERS, FaceEncoder, build_encoder
from anonymizer.measure.pose import PoseMeter
from anonymizer.models import describe
from anonymizer.policy import Policy
from anonymizer.registry import Registry


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


def weight_files(registry: Registry, name: str, params: dict, model_dir: str | None) -> list[dict]:
    """The weight files component `name` loads, with sha256 and licence; raises when one is missing or altered."""
    factory = registry.factory(name)
    custom = getattr(factory, "weight_files", None)
    rows = custom(params, model_dir) if custom else [describe(m, model_dir) for m in getattr(factory, "MODELS", ())]
    return [{"component": name, **r} if "component" not in r else r for r in rows]


def model_inventory(policy: Policy) -> list[dict]:
    """Every weight file the policy's components load, with its sha256, for the audit report."""
    pose = policy.measurement.pose_landmarks
    detectors = [*policy.detection.detectors, policy.detection.auditor, *([pose] if pose else [])]
    out = [r for c in detectors for r in weight_files(DETECTORS, c.name, c.params, policy.model_dir)]
    op = policy.anonymization.operator
    out += weight_files(ANONYMIZERS, op.name, op.params, policy.model_dir)
    enc = policy.measurement.encoder
    return out + weight_files(ENCODERS, enc.name, enc.params, policy.model_dir)
