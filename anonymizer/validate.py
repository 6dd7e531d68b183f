"""Validate: the release gate. A great-expectations suite built from the policy's thresholds runs over the
metrics tables; anything short of a clean pass (a failed check, a missing metric, a crash) is a fail."""

from __future__ import annotations

import logging
import traceback
from dataclasses import asdict, dataclass, field

import pandas as pd

from anonymizer.policy import Policy


@dataclass
class Check:
    name: str
    table: str
    expectation: str
    protects: str
    threshold: str
    observed: object
    success: bool


@dataclass
class Verdict:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    @property
    def reason(self) -> str:
        if self.error:
            return f"validation could not complete: {self.error}"
        if self.passed:
            return "all checks passed"
        return "failed: " + "; ".join(f"{c.name} (observed {c.observed}, allowed {c.threshold})" for c in self.failed)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "error": self.error, "checks": [asdict(c) for c in self.checks]}


def _expectations(policy: Policy) -> list[tuple[str, str, object, str, str]]:
    """(check name, table, expectation, what it protects, threshold text), all from the policy."""
    import great_expectations as gx

    t = policy.thresholds
    E = gx.expectations
    return [
        ("images_processed", "images", E.ExpectTableRowCountToBeBetween(min_value=t.min_images),
         "an empty run is not a release", f">= {t.min_images} images"),
        ("failed_images", "images", E.ExpectColumnValuesToBeNull(column="error", mostly=1 - t.max_failed_fraction),
         "the run processed what it was given", f"<= {t.max_failed_fraction:.0%} failed"),
        ("metadata_left", "images", E.ExpectColumnValuesToBeBetween(column="metadata_fields_left", max_value=t.max_metadata_fields_left),
         "no EXIF/GPS/XMP/IPTC/thumbnail leaves with the image", f"<= {t.max_metadata_fields_left} fields per image"),
        ("outside_changed", "images", E.ExpectColumnValuesToBeBetween(column="outside_changed_fraction", max_value=t.max_outside_changed_fraction),
         "background untouched: the operator stayed inside the face masks", f"<= {t.max_outside_changed_fraction} per image"),
        ("uncovered_faces", "images", E.ExpectColumnSumToBeBetween(column="uncovered_faces", max_value=t.max_uncovered_faces),
         "faces the auditor detector finds are anonymized too", f"<= {t.max_uncovered_faces} in total"),
        ("naive_reidentification", "faces", E.ExpectColumnValuesToBeBetween(column="reid_distance", min_value=t.same_person_distance, mostly=1 - t.max_reid_rate),
         "a face recognizer cannot link the released face to the original", f"<= {t.max_reid_rate:.0%} of scored faces closer than {t.same_person_distance}"),
    ]


def _observed(expectation_type: str, result: dict) -> object:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_count" in result:
        n = result.get("element_count", 0) - result.get("missing_count", 0)
        return f"{result['unexpected_count']}/{n} ({result.get('unexpected_percent') or 0:.1f}%)"
    return None


def validate(policy: Policy, images: pd.DataFrame, faces: pd.DataFrame) -> Verdict:
    try:
        return _validate(policy, images, faces)
    except Exception as exc:  # noqa: BLE001 - fail closed
        logging.getLogger("anonymizer").error(traceback.format_exc())
        return Verdict(False, error=f"{type(exc).__name__}: {exc}")


def _validate(policy: Policy, images: pd.DataFrame, faces: pd.DataFrame) -> Verdict:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("metrics")
    tables = {"images": images, "faces": faces[faces["source"] == "primary"] if len(faces) else faces}
    specs = _expectations(policy)
    checks: list[Check] = []
    for table, df in tables.items():
        mine = [s for s in specs if s[1] == table]
        missing = {getattr(s[2], "column", None) for s in mine} - set(df.columns) - {None}
        if missing:
            raise KeyError(f"metrics table {table!r} lacks {sorted(missing)}")
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(f"{table}-all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{policy.name}-{table}"))
        for name, _, exp, protects, threshold in mine:
            exp.meta = {"check": name, "protects": protects}
            suite.add_expectation(exp)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{table}-gate", data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": df})
        by_name = {r.expectation_config.meta["check"]: r for r in result.results}
        for name, _, _, protects, threshold in mine:
            r = by_name[name]
            if "raised_exception': True" in str(r.exception_info):
                raise RuntimeError(f"check {name} could not be computed: {r.exception_info}")
            checks.append(Check(name, table, r.expectation_config.type, protects, threshold,
                                _observed(r.expectation_config.type, r.result), bool(r.success)))
    return Verdict(all(c.success for c in checks), checks)

