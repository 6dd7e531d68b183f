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
from anonymizer.models import MODELS, describe
from anonymizer.onnx_runtime import on_cuda
from anonymizer.policy import Policy, PolicyError
from anonymizer.registry import Registry


@dataclass
class Components:
    """The models a worker loads once and reuses for every image."""

    detector: Ensemble
    auditor: Detector
    anonymizer: Anonymizer
    encoder: FaceEncoder
    second_encoder: FaceEncoder | None = None
    pose_meter: PoseMeter | None = None
    batch_detection: bool = False  # a shard's images detected together (policy execution.batch_detection)

    @classmethod
    def from_policy(cls, policy: Policy) -> "Components":
        d = policy.detection
        pose = policy.measurement.pose_landmarks
        second = policy.measurement.second_encoder
        return cls(
            batch_detection=batch_detection(policy),
            detector=build_ensemble(d, policy.model_dir),
            auditor=build_detector(d.auditor.name, d.auditor.params, policy.model_dir),
            anonymizer=build_operator(policy),
            encoder=build_encoder(policy.measurement.encoder.name, policy.measurement.encoder.params, policy.model_dir),
            second_encoder=(build_encoder(second.name, second.params, policy.model_dir) if second else None),
            pose_meter=PoseMeter(build_detector(pose.name, pose.params, policy.model_dir)) if pose else None,
        )


def batch_detection(policy: Policy) -> bool:
    """Whether a worker detects a shard's images together (execution.batch_detection; auto: on a CUDA GPU)."""
    batch = policy.execution.batch_detection
    return batch == "always" or (batch == "auto" and on_cuda("auto"))


_LOADS_WEIGHTS = ("generated", "bank")  # operators that find files in the model directories; no strength


def build_operator(policy: Policy, name: str | None = None, strength: float | None = None, **overrides) -> Anonymizer:
    """An operator as the pipeline builds it, with the policy's region settings: the policy's own, or `name`
    (evaluations) at `strength`. The policy's own operator keeps its params (the generator's weights, its
    identity guard); the generator and the face bank take no strength, and are given the policy's model_dir
    (where their weights and banks are found)."""
    a = policy.anonymization
    name = name or a.operator.name
    params = dict(a.operator.params) if name == a.operator.name else {}
    if strength is not None and name not in _LOADS_WEIGHTS:
        params["strength"] = strength
    params.update(overrides)
    if name in _LOADS_WEIGHTS:
        params.setdefault("model_dir", policy.model_dir)
    return ANONYMIZERS.create(name, **params, **a.region.model_dump())


def weight_files(registry: Registry, name: str, params: dict, model_dir: str | None) -> list[dict]:
    """The weight files component `name` loads, with sha256 and licence; raises when one is missing or altered."""
    factory = registry.factory(name)
    custom = getattr(factory, "weight_files", None)
    rows = custom(params, model_dir) if custom else [describe(m, model_dir) for m in getattr(factory, "MODELS", ())]
    return [{"component": name, **r, "licence_class": licence_class(r)} if "component" not in r
            else {**r, "licence_class": licence_class(r)} for r in rows]


def licence_class(row: dict) -> str:
    """A weight file's licence class (anonymizer.models LICENCE_CLASSES): the row's own, else its model
    entry's, else "unknown" (which the licence gate refuses unless the policy accepts it)."""
    if row.get("licence_class"):
        return row["licence_class"]
    spec = MODELS.get(row.get("name", ""))
    return spec.licence_class if spec else "unknown"


def model_inventory(policy: Policy, keyed: bool = False) -> list[dict]:
    """Every weight file the policy's components load, with its sha256, licence and licence class, for the
    audit report and the licence gate (check_licences). `keyed`: the run links people (an identity key),
    so the linking recognizer is loaded too."""
    pose = policy.measurement.pose_landmarks
    detectors = [*policy.detection.detectors, policy.detection.auditor, *([pose] if pose else [])]
    out = [r for c in detectors for r in weight_files(DETECTORS, c.name, c.params, policy.model_dir)]
    op = policy.anonymization.operator
    out += weight_files(ANONYMIZERS, op.name, op.params, policy.model_dir)
    for enc in filter(None, (policy.measurement.encoder, policy.measurement.second_encoder)):
        out += weight_files(ENCODERS, enc.name, enc.params, policy.model_dir)
    if keyed:
        enc = policy.anonymization.linking.encoder
        out += [dict(r, component=f"linking:{enc.name}")
                for r in weight_files(ENCODERS, enc.name, enc.params, policy.model_dir)]
    return out


def virtual_identities(policy: Policy) -> list[str | None] | None:
    """The virtual identities the policy's operator can show (a keyed run assigns one per person), each as
    the apparent-sex label a person must read as to get it (None: anyone), or None when it shows none (a
    classical operator: nothing to key). An operator that can reports them through a
    `virtual_identities(params, model_dir)` static method."""
    op = policy.anonymization.operator
    listed = getattr(ANONYMIZERS.factory(op.name), "virtual_identities", None)
    return listed(dict(op.params), policy.model_dir) if listed else None


def check_licences(policy: Policy, inventory: list[dict]) -> None:
    """The licence gate, where a run starts: raise PolicyError naming every model file (or face bank) whose
    licence class is not "permissive" and not in the policy's `accept_licences`. Evaluation commands do not
    call it: measuring a model is not publishing data made with it."""
    accepted = {"permissive", *policy.accept_licences}
    refused = {(r.get("name"), r.get("file"), r["licence_class"]): r for r in inventory if r["licence_class"] not in accepted}
    if not refused:
        return
    named = "; ".join(f"model {r.get('name')!r} ({r.get('file')}, used by {r.get('component')}) is {r['licence_class']}: "
                      f"licence {r.get('licence')!r}" for r in refused.values())
    classes = ", ".join(sorted({r["licence_class"] for r in refused.values()}))
    raise PolicyError(f"policy {policy.name}: licence gate: {named}. The policy must accept this explicitly "
                      f"(top level: accept_licences: [{classes}]), and whoever runs it must hold the rights the "
                      "licence requires; else name a permissively licensed model")
