"""A policy's component names and params checked against the registries before anything is built.

A misspelt detector or parameter would otherwise surface only when a worker builds its models (or, for a
factory that ignores extras, never). This imports the detector, operator and encoder registries (torch,
OpenCV, dlib), which is why anonymizer.policy does not call it: the run calls it where it starts.
"""

from __future__ import annotations

from typing import Any

from anonymizer.policy import Component, Policy, PolicyError
from anonymizer.registry import ComponentError, Registry

# What the pipeline passes to each kind itself (anonymizer/components.py): never required from the policy,
# never allowed in its params. The generated operator's model_dir is only defaulted, so a policy may set it.
DETECTOR_INJECTED = ("model_dir",)
ENCODER_INJECTED = ("model_dir",)
OPERATOR_INJECTED = ("expand", "shape", "feather")  # anonymization.region


def components(policy: Policy) -> list[tuple[str, str, Component, tuple[str, ...]]]:
    """(key, registry kind, component, injected params) for every component the policy names."""
    d, m = policy.detection, policy.measurement
    out = [(f"detection.detectors[{i}]", "detector", c, DETECTOR_INJECTED) for i, c in enumerate(d.detectors)]
    out.append(("detection.auditor", "detector", d.auditor, DETECTOR_INJECTED))
    out.append(("anonymization.operator", "anonymizer", policy.anonymization.operator, OPERATOR_INJECTED))
    out.append(("anonymization.linking.encoder", "encoder", policy.anonymization.linking.encoder, ENCODER_INJECTED))
    out.append(("measurement.encoder", "encoder", m.encoder, ENCODER_INJECTED))
    if m.second_encoder is not None:
        out.append(("measurement.second_encoder", "encoder", m.second_encoder, ENCODER_INJECTED))
    if m.pose_landmarks is not None:
        out.append(("measurement.pose_landmarks", "detector", m.pose_landmarks, DETECTOR_INJECTED))
    return out


def _registries() -> dict[str, Registry[Any]]:
    from anonymizer.anonymize import ANONYMIZERS
    from anonymizer.detect import DETECTORS
    from anonymizer.measure.encoder import ENCODERS

    return {"detector": DETECTORS, "anonymizer": ANONYMIZERS, "encoder": ENCODERS}


def check_components(policy: Policy, source: str | None = None) -> None:
    """Raise PolicyError naming every component key whose name is unknown or whose params do not fit the
    factory's signature (unknown or missing parameter), e.g. "key 'detection.detectors[1].params.scale':
    unknown parameter for detector 'yunet'; known: ...". Builds nothing."""
    registries = _registries()
    problems = []
    for key, kind, component, injected in components(policy):
        try:
            registries[kind].check(component.name, component.params, injected)
        except ComponentError as exc:
            where = f"{key}.name" if exc.param is None else f"{key}.params.{exc.param}"
            problems.append(f"key '{where}': {exc}")
    if problems:
        raise PolicyError(f"policy {source or policy.name}: " + "; ".join(problems))
