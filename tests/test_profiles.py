"""Named policy profiles (strict, standard, research): they load, every threshold carries its rationale,
the profiles are ordered, the generated suite fails on each violated threshold, and validation fails closed.
Every embedded profile extends the default and detects at least what the default detects."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from anonymizer.policy import load_policy, parse_policy, profiles
from anonymizer.validate import validate
from conftest import REPO

PROFILES = ["strict", "standard", "research"]
CHECKS = {"images_processed", "failed_images", "metadata_left", "outside_changed", "uncovered_faces", "naive_reidentification"}


@pytest.fixture(scope="module", params=PROFILES)
def profile(request):
    return load_policy(REPO / "policies" / f"{request.param}.yaml")


def test_profile_loads_under_its_name_and_builds(profile):
    from anonymizer.components import Components

    assert profile.name in PROFILES
    c = Components.from_policy(profile)
    assert c.encoder.name == profile.measurement.encoder.name


def test_every_threshold_states_its_rationale(profile):
    for source in profile.sources:  # the profile's own file, and each it extends (the default's thresholds)
        if "\nthresholds:\n" not in source.text:
            continue
        block = source.text.split("\nthresholds:\n")[1].split("\n\n")[0].splitlines()
        commented = False
        for line in block:
            if line.strip().startswith("#"):
                commented = True
            elif re.match(r"\s+\w+:", line):
                assert commented or "#" in line, f"{source.source}: threshold without a rationale: {line.strip()}"
                commented = False
    for phrase in ("Recital 26", "singling out", "linkability", "inference", "Policy 0070", "FAR"):
        assert phrase in profile.source_text, f"{profile.name}: rationale does not mention {phrase!r}"


def test_calibrated_distance_is_recorded_with_its_provenance(profile):
    t = profile.thresholds.same_person_distance
    setter = next(s for s in profile.sources if re.search(r"^\s+same_person_distance:", s.text, re.M))
    line = next(ln for ln in setter.text.splitlines() if ln.strip().startswith("same_person_distance:"))
    assert "calibrated" in line and "FAR" in line and str(t) in line, line
    assert t < 0.6  # stricter than dlib's library default: it was calibrated on data, not taken from the library


@pytest.mark.parametrize("name", profiles())
def test_every_embedded_profile_loads_checks_and_extends_the_default(name):
    from anonymizer.policy_check import check_components

    p = load_policy(profile=name)
    assert p.name == name and p == load_policy(REPO / "policies" / f"{name}.yaml")
    check_components(p)  # every component name and param is one its factory takes
    assert parse_policy(p.text, "run policy") == p  # the merged text is what a worker is sent
    assert p.sources[-1].source == "default", f"{name}: extends {p.sources[-1].source}, not the default"


def test_no_profile_detects_less_than_the_default():
    """Drift guard: every profile runs each of the default's detectors, at the default's scales or more, at
    no higher score threshold, fused the same way at no higher cut (a profile may add detectors or scales)."""
    base = load_policy().detection
    for name in profiles():
        d = load_policy(profile=name).detection
        mine = {c.name: c for c in d.detectors}
        for c in base.detectors:
            assert c.name in mine, f"{name}: drops the default's detector {c.name}"
            p, q = c.params, mine[c.name].params
            assert set(p.get("scales", [1.0])) <= set(q.get("scales", [1.0])), f"{name}: {c.name} at fewer scales"
            assert q.get("score_threshold", 1.0) <= p.get("score_threshold", 1.0), f"{name}: {c.name} threshold"
            assert mine[c.name].weight == c.weight, f"{name}: {c.name} votes differently"
        assert (d.merge, d.merge_iou, d.vote_per_scale) == (base.merge, base.merge_iou, base.vote_per_scale), name
        assert d.min_score <= base.min_score, f"{name}: a higher fused-score cut than the default's"
        if d.auditor != base.auditor:  # another auditor only where it is measured at least as strong
            from anonymizer.detect.strength import auditor_strength

            mine_s, base_s = (auditor_strength(a.name, a.params) for a in (d.auditor, base.auditor))
            assert mine_s and base_s, f"{name}: an auditor of unmeasured strength"
            for size in (">=32", "16-32"):
                assert mine_s["wider"]["recall"][size] >= base_s["wider"]["recall"][size], f"{name}: weaker auditor"


def test_profiles_are_ordered_from_strict_to_research():
    p = {n: load_policy(REPO / "policies" / f"{n}.yaml") for n in PROFILES}
    t = {n: p[n].thresholds for n in PROFILES}
    assert t["strict"].max_reid_rate <= 0.05 < t["standard"].max_reid_rate <= 0.09  # health-data practice; EMA 0070
    assert t["research"].max_reid_rate <= 0.09  # the outer bound holds for every profile
    # A larger decision distance counts more faces as re-identified: the stricter profile uses the larger one.
    assert t["strict"].same_person_distance >= t["standard"].same_person_distance >= t["research"].same_person_distance
    for key in ("max_uncovered_faces", "max_metadata_fields_left"):
        assert getattr(t["strict"], key) == getattr(t["standard"], key) == getattr(t["research"], key) == 0
    assert t["strict"].max_failed_fraction <= t["standard"].max_failed_fraction <= t["research"].max_failed_fraction


def _tables(policy, violate: bool, n_images: int = 100, n_faces: int = 100):
    """Metrics tables exactly at each threshold (pass) or one step past it (fail)."""
    t = policy.thresholds
    step = 1 if violate else 0
    failed = math.floor(t.max_failed_fraction * n_images) + step
    images = pd.DataFrame({
        "key": [f"{i}.jpg" for i in range(n_images)],
        "error": ["corrupt"] * failed + [None] * (n_images - failed),
        "metadata_fields_left": [t.max_metadata_fields_left + step] + [0] * (n_images - 1),
        "outside_changed_fraction": [t.max_outside_changed_fraction * (1.5 if violate else 1.0)] + [0.0] * (n_images - 1),
        "uncovered_faces": [t.max_uncovered_faces + step] + [0] * (n_images - 1),
    })
    close = math.floor(t.max_reid_rate * n_faces) + step
    faces = pd.DataFrame({
        "key": [f"{i}.jpg" for i in range(n_faces + 1)], "source": ["primary"] * n_faces + ["auditor"],
        "reid_distance": [t.same_person_distance * 0.5] * close + [t.same_person_distance * 1.5] * (n_faces - close) + [None],
    })
    return images, faces


def test_suite_passes_at_each_bound_and_fails_one_past_it(profile):
    ok = validate(profile, *_tables(profile, violate=False), data_docs=False)
    assert ok.passed, ok.reason
    bad = validate(profile, *_tables(profile, violate=True), data_docs=False)
    assert not bad.passed and bad.error is None
    assert {c.name for c in bad.failed} == CHECKS - {"images_processed"}
    empty = validate(profile, *(t.iloc[:0] for t in _tables(profile, violate=False)), data_docs=False)
    assert [c.name for c in empty.failed] == ["images_processed"]


def test_crash_in_validation_fails_closed(monkeypatch, policy):
    import great_expectations as gx

    images, faces = _tables(policy, violate=False)

    def boom(*a, **k):
        raise RuntimeError("GX context unavailable")

    monkeypatch.setattr(gx, "get_context", boom)
    v = validate(policy, images, faces)
    assert not v.passed and "GX context unavailable" in v.reason and v.checks == []


def test_metric_that_cannot_be_computed_fails_closed(policy):
    images, faces = _tables(policy, violate=False)
    images["outside_changed_fraction"] = ["n/a"] * len(images)  # a broken metric column
    v = validate(policy, images, faces, data_docs=False)
    assert not v.passed and v.error and "outside_changed" in v.reason


def test_missing_check_result_fails_closed(monkeypatch, policy):
    import great_expectations as gx

    images, faces = _tables(policy, violate=False)
    real_run = gx.Checkpoint.run

    def drop_last(self, *args, **kwargs):  # GX returns one result fewer than the suite has expectations
        result = real_run(self, *args, **kwargs)
        for r in result.run_results.values():
            r.results = r.results[:-1]
        return result

    monkeypatch.setattr(gx.Checkpoint, "run", drop_last)
    v = validate(policy, images, faces, data_docs=False)
    assert not v.passed and v.error and "has no result" in v.reason
