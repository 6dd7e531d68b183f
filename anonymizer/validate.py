"""Validate: the release gate. A great-expectations suite built from the policy's thresholds runs over the
metrics tables; anything short of a clean pass (a failed check, a missing metric, a missing result, a
crash) is a fail. The suites, each check's evidence and a great-expectations Data Docs site are returned
with the verdict so that the audit report can show them.

Data Docs print some values without HTML-escaping them (an `error` naming a key, offending keys), and they are
published with a release: every string in the tables great-expectations sees is HTML-escaped first (the
evidence returned here is mapped back to the real values), and every page of the site is checked for markup
great-expectations does not write itself (`foreign_markup`); a page with any fails the run."""

from __future__ import annotations

import html
import logging
import math
import re
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from anonymizer.policy import Policy

DATA_DOCS_PREFIX = "data_docs/"
_DOCS_SKIP_SUFFIXES = (".gif",)  # GX's animated how-to images: megabytes an auditor does not need
_MAX_EVIDENCE_ROWS = 20


@dataclass
class Check:
    name: str
    table: str
    expectation: str
    protects: str
    threshold: str
    observed: object
    success: bool
    evidence: dict = field(default_factory=dict)  # counts and a sample of the offending rows (keys, values)


@dataclass
class Verdict:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    suites: dict = field(default_factory=dict)  # table -> the expectation suite generated from the policy (JSON)
    docs: dict[str, bytes] = field(default_factory=dict, repr=False)  # Data Docs site: relative path -> bytes

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    @property
    def reason(self) -> str:
        if self.error:
            return f"validation could not complete: {self.error}"
        if self.passed:
            return self.note or "all checks passed"
        return "failed: " + "; ".join(f"{c.name} (observed {c.observed}, allowed {c.threshold})" for c in self.failed)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "error": self.error, "checks": [asdict(c) for c in self.checks],
                "suites": self.suites,
                "data_docs": DATA_DOCS_PREFIX + "index.html" if (DATA_DOCS_PREFIX + "index.html") in self.docs else None}


def _expectations(policy: Policy, processed: int = 0, carried: int = 0) -> list[tuple[str, str, object, str, str]]:
    """(check name, table, expectation, what it protects, threshold text), all from the policy."""
    import great_expectations as gx

    t = policy.thresholds
    E = gx.expectations
    # The failed fraction's denominator is every object the resulting release accounts for: the objects this
    # run processed (failed or not) plus those carried unchanged from the previous release (none in a full
    # run); only processed objects can fail, so the bound becomes a count of them.
    allowed = math.floor(t.max_failed_fraction * (processed + carried) + 1e-9)
    failed_mostly = max(0.0, 1 - allowed / processed - 1e-12) if processed else 1 - t.max_failed_fraction
    pose = [] if t.max_median_pose_error_deg is None else [
        ("pose_kept", "faces", E.ExpectColumnMedianToBeBetween(column="pose_error", max_value=t.max_median_pose_error_deg),
         "the replacement keeps the head pose (useful data for vision work)",
         f"median <= {t.max_median_pose_error_deg} degrees")]
    if t.min_redetected_fraction is not None:
        pose.append(("still_a_face", "faces", E.ExpectColumnValuesToBeInSet(
            column="redetected", value_set=[True], mostly=t.min_redetected_fraction),
            "a replaced face is still found by a detector (the data stays useful; the pose check has faces to measure)",
            f"<= {1 - t.min_redetected_fraction:.0%} of measured replaced faces not found again"))
    return [
        ("images_processed", "images", E.ExpectTableRowCountToBeBetween(min_value=t.min_images),
         "an empty run is not a release", f">= {t.min_images} images"),
        ("failed_images", "images", E.ExpectColumnValuesToBeNull(column="error", mostly=failed_mostly),
         "the run processed what it was given", f"<= {t.max_failed_fraction:.0%} failed of processed + carried objects "
         f"({processed} + {carried}: at most {allowed})"),
        ("metadata_left", "images", E.ExpectColumnValuesToBeBetween(column="metadata_fields_left", max_value=t.max_metadata_fields_left),
         "no EXIF/GPS/XMP/IPTC/thumbnail leaves with the image", f"<= {t.max_metadata_fields_left} fields per image"),
        ("outside_changed", "images", E.ExpectColumnValuesToBeBetween(column="outside_changed_fraction", max_value=t.max_outside_changed_fraction),
         "background untouched: the operator stayed inside the face masks", f"<= {t.max_outside_changed_fraction} per image"),
        ("uncovered_faces", "images", E.ExpectColumnSumToBeBetween(column="uncovered_faces", max_value=t.max_uncovered_faces),
         "faces the auditor detector finds are anonymized too", f"<= {t.max_uncovered_faces} in total"),
        ("naive_reidentification", "faces", E.ExpectColumnValuesToBeBetween(column="reid_distance", min_value=t.same_person_distance, mostly=1 - t.max_reid_rate),
         f"a face recognizer ({policy.measurement.encoder.name}) cannot link the released face to the original",
         f"<= {t.max_reid_rate:.0%} of scored faces closer than {t.same_person_distance}"),
    ] + _second_recognizer(policy, E) + pose


def _second_recognizer(policy: Policy, E) -> list[tuple[str, str, object, str, str]]:
    """The same re-identification bound for an independent second recognizer, at its own distance."""
    second, t = policy.measurement.second_encoder, policy.thresholds
    if second is None:
        return []
    return [("naive_reidentification_second", "faces", E.ExpectColumnValuesToBeBetween(
        column="reid_distance_second", min_value=second.same_person_distance, mostly=1 - t.max_reid_rate),
        f"an independent second recognizer ({second.name}) cannot link the released face to the original either",
        f"<= {t.max_reid_rate:.0%} of scored faces closer than {second.same_person_distance}")]


def _plain(value: object) -> object:
    """JSON-safe copy of a GX result value (numpy scalars, NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _observed(expectation_type: str, result: dict) -> object:
    if "observed_value" in result:
        return _plain(result["observed_value"])
    if "unexpected_count" in result:
        n = result.get("element_count", 0) - result.get("missing_count", 0)
        return f"{result['unexpected_count']}/{n} ({result.get('unexpected_percent') or 0:.1f}%)"
    return None


_EVIDENCE_KEYS = ("element_count", "missing_count", "unexpected_count", "unexpected_percent", "partial_unexpected_list",
                  "partial_unexpected_index_list")


def _evidence(result: dict, df: pd.DataFrame, column: str | None, sum_check: bool, real: dict[str, str]) -> dict:
    ev = _unescaped({k: _plain(result[k]) for k in _EVIDENCE_KEYS if k in result}, real)
    if "partial_unexpected_index_list" in ev:
        ev["offending_rows"] = ev.pop("partial_unexpected_index_list")[:_MAX_EVIDENCE_ROWS]
    if sum_check and column and len(df) and "key" in df.columns:
        # A sum has no per-row result in GX: name the rows that contribute to it.
        hit = df[pd.to_numeric(df[column], errors="coerce").fillna(0) > 0]
        ev["offending_rows"] = _plain(hit[["key", column]].head(_MAX_EVIDENCE_ROWS).to_dict("records"))
        ev["offending_row_count"] = int(len(hit))
    ev["rows"] = int(len(df))
    return ev


def _escaped(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table great-expectations sees: every string HTML-escaped; and escaped -> real value."""
    out, real = df.copy(), {}
    for column in df.columns:
        if not (df[column].dtype == object or pd.api.types.is_string_dtype(df[column].dtype)):
            continue

        def escape(v: object) -> object:
            if not isinstance(v, str):
                return v
            e = html.escape(v, quote=True)
            if e != v:
                real[e] = v
            return e
        out[column] = df[column].map(escape)
    return out, real


def _unescaped(value: object, real: dict[str, str]) -> object:
    if isinstance(value, str):
        return real.get(value, value)
    if isinstance(value, dict):
        return {k: _unescaped(v, real) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescaped(v, real) for v in value]
    return value


# What great-expectations' own Data Docs pages hold: these inline handlers, scripts/styles/logos from these hosts.
_GX_HANDLERS = re.compile(r"(clearTableFilters\('[\w-]+'\)|showAllValidations\(\)|hideSucceededValidations\(\));?")
_GX_HOSTS = {"cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "stackpath.bootstrapcdn.com", "code.jquery.com",
             "maxcdn.bootstrapcdn.com", "great-expectations-web-assets.s3.us-east-2.amazonaws.com",
             "greatexpectations.io", "docs.greatexpectations.io"}
_NEVER_TAGS = {"iframe", "frame", "frameset", "object", "embed", "applet", "form", "base", "portal"}
_URL_ATTRS = {"src", "href", "action", "formaction", "data", "poster", "srcset", "xlink:href", "background"}


class _MarkupCheck(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _NEVER_TAGS:
            self.found.append(f"<{tag}> element")
        for name, value in attrs:
            value = (value or "").strip()
            if name.startswith("on") and not _GX_HANDLERS.fullmatch(value):
                self.found.append(f"<{tag} {name}={value[:60]!r}>: an event handler great-expectations does not write")
            elif name == "srcdoc":
                self.found.append(f"<{tag} srcdoc>")
            elif name in _URL_ATTRS and value:
                try:
                    url = urlsplit(value.lower().replace("\t", "").replace("\n", ""))
                    host = url.hostname
                except ValueError:
                    self.found.append(f"<{tag} {name}={value[:60]!r}>: not a URL")
                    continue
                if url.scheme in ("javascript", "vbscript") or (url.scheme == "data" and tag != "img"):
                    self.found.append(f"<{tag} {name}={value[:60]!r}>: a script URL")
                elif url.netloc and host not in _GX_HOSTS and (name != "href" or tag == "link"):
                    self.found.append(f"<{tag} {name}={value[:60]!r}>: loads from a host great-expectations does not use")
            elif name == "http-equiv" and value.lower() == "refresh":
                self.found.append(f"<{tag} http-equiv=refresh>")


def foreign_markup(page: bytes, values: list[str] = ()) -> list[str]:
    """What in a Data Docs page great-expectations did not write: a tag, event handler or URL outside what its
    templates produce, or one of `values` (strings that were escaped for it) printed raw."""
    text = page.decode("utf-8", "replace")
    check = _MarkupCheck()
    check.feed(text)
    check.close()
    return check.found + [f"a table value printed unescaped: {v[:60]!r}" for v in values if v in text]


def _check_site(docs: dict[str, bytes], raw: list[str]) -> None:
    for name, data in docs.items():
        if name.endswith(".html"):
            found = foreign_markup(data, raw)
            if found:
                raise RuntimeError(f"Data Docs page {name} holds markup great-expectations did not write: "
                                   + "; ".join(found[:5]))


def _raised(exception_info: object) -> bool:
    if isinstance(exception_info, dict):
        if exception_info.get("raised_exception"):
            return True
        return any(_raised(v) for v in exception_info.values() if isinstance(v, dict))
    return "raised_exception': True" in str(exception_info)


def validate(policy: Policy, images: pd.DataFrame, faces: pd.DataFrame, data_docs: bool = True,
             carried: int = 0) -> Verdict:
    """Run the policy's suite. Never raises: any failure to validate is a failed verdict (fail closed).
    `carried`: objects an incremental run carries unchanged from the previous release (the failed fraction
    is over processed + carried)."""
    try:
        return _validate(policy, images, faces, data_docs, carried)
    except Exception as exc:  # noqa: BLE001 - fail closed
        logging.getLogger("anonymizer").error(traceback.format_exc())
        return Verdict(False, error=f"{type(exc).__name__}: {exc}")


def _collect_site(root: Path) -> dict[str, bytes]:
    return {DATA_DOCS_PREFIX + p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(_DOCS_SKIP_SUFFIXES)}


def _validate(policy: Policy, images: pd.DataFrame, faces: pd.DataFrame, data_docs: bool, carried: int = 0) -> Verdict:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    with tempfile.TemporaryDirectory(prefix="anonymizer-gx-") as site:
        if data_docs:
            context.add_data_docs_site("report", {
                "class_name": "SiteBuilder", "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": site},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        source = context.data_sources.add_pandas("metrics")
        tables = {"images": images, "faces": faces[faces["source"] == "primary"] if len(faces) else faces}
        escaped = {table: _escaped(df) for table, df in tables.items()}
        real = {e: v for _, r in escaped.values() for e, v in r.items()}
        specs = _expectations(policy, len(images), carried)
        definitions, suites = [], {}
        for table, df in tables.items():
            mine = [s for s in specs if s[1] == table]
            missing = {getattr(s[2], "column", None) for s in mine} - set(df.columns) - {None}
            if missing:
                raise KeyError(f"metrics table {table!r} lacks {sorted(missing)}")
            batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(f"{table}-all")
            suite = context.suites.add(gx.ExpectationSuite(name=f"{policy.name}-{table}",
                                                           meta={"policy": policy.name, "policy_sha256": policy.sha256}))
            for name, _, exp, protects, threshold in mine:
                exp.meta = {"check": name, "protects": protects, "threshold": threshold}
                suite.add_expectation(exp)
            suites[table] = _plain(suite.to_json_dict())
            definitions.append(context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{table}-gate", data=batch, suite=suite)))
        # One checkpoint per table (a checkpoint hands one dataframe to all its definitions); each one
        # updates the Data Docs site, whose index then lists both validations.
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["report"])] if data_docs else []
        results = {}
        for definition, (table, df) in zip(definitions, tables.items()):
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"{policy.name}-{table}-gate", validation_definitions=[definition], actions=actions,
                result_format={"result_format": "SUMMARY",
                               **({"unexpected_index_column_names": ["key"]} if "key" in df.columns else {})}))
            run = checkpoint.run(batch_parameters={"dataframe": escaped[table][0]})
            if len(run.run_results) != 1:
                raise RuntimeError(f"checkpoint for {table!r} returned {len(run.run_results)} results")
            results[table] = next(iter(run.run_results.values()))
        checks: list[Check] = []
        for table, df in tables.items():
            by_name = {r.expectation_config.meta["check"]: r for r in results[table].results}
            for name, _, exp, protects, threshold in (s for s in specs if s[1] == table):
                r = by_name.get(name)
                if r is None:
                    raise RuntimeError(f"check {name} has no result")
                if _raised(r.exception_info):
                    raise RuntimeError(f"check {name} could not be computed: {r.exception_info}")
                column = getattr(exp, "column", None)
                checks.append(Check(name, table, r.expectation_config.type, protects, threshold,
                                    _observed(r.expectation_config.type, r.result), bool(r.success),
                                    _evidence(r.result, df, column, "sum" in r.expectation_config.type, real)))
        if len(checks) != len(specs):
            raise RuntimeError(f"{len(checks)} of {len(specs)} checks ran")
        if carried:  # observed over the same denominator as the bound
            gate, failed = next(c for c in checks if c.name == "failed_images"), int(images["error"].notna().sum())
            gate.observed = f"{failed}/{len(images) + carried} ({100 * failed / (len(images) + carried):.1f}%)"
        docs = _collect_site(Path(site)) if data_docs else {}
        if data_docs and DATA_DOCS_PREFIX + "index.html" not in docs:
            raise RuntimeError("great-expectations built no Data Docs index")
        _check_site(docs, [v for v in real.values() if len(v) >= 4])
    return Verdict(all(c.success for c in checks), checks, suites=suites, docs=docs)
