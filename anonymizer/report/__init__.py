"""Report: the audit record of a run, as report.json (for machines) and a self-contained report.html
(for a compliance auditor). Neither holds a single pixel of an original image; only the report of a released
run shows a few downscaled outputs (`sample_grid`), since a failed run's outputs may still show faces."""

from __future__ import annotations

import html
import io
import json
import platform
from importlib import metadata

import numpy as np
import pandas as pd

from anonymizer.report.charts import SAMPLE_FIGURE, cell, det_chart, figure_html, html_table, png

PACKAGES = ["anonymizer", "prefect", "ray", "torch", "opencv-python-headless", "great-expectations", "dlib-bin",
            "face-recognition-models", "pyarrow", "numpy", "pillow", "boto3"]


_MAX_BARS = 60


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def summary_metrics(images: pd.DataFrame, faces: pd.DataFrame, same_person: float) -> dict:
    ok = images[images["error"].isna()] if len(images) else images
    primary = faces[faces["source"] == "primary"] if len(faces) else faces
    scored = primary["reid_distance"].dropna() if len(primary) else pd.Series(dtype=float)
    posed = primary[primary["yaw_before"].notna()] if len(primary) and "yaw_before" in primary else primary.iloc[:0]
    pose_error = posed["pose_error"].dropna() if len(posed) else pd.Series(dtype=float)
    methods = primary["method"].value_counts().to_dict() if len(primary) else {}
    return {
        "images_processed": int(len(ok)),
        "images_failed": int(len(images) - len(ok)),
        "faces_detected": int(ok["faces_detected"].sum()) if len(ok) else 0,
        "faces_anonymized": int(ok["faces_anonymized"].sum()) if len(ok) else 0,
        "auditor_faces": int(ok["auditor_faces"].sum()) if len(ok) else 0,
        "uncovered_faces": int(ok["uncovered_faces"].sum()) if len(ok) else 0,
        "reid_scored_faces": int(len(scored)),
        "naive_reidentification_rate": float((scored < same_person).mean()) if len(scored) else 0.0,
        "median_reid_distance": float(scored.median()) if len(scored) else None,
        "max_outside_changed_fraction": float(ok["outside_changed_fraction"].max()) if len(ok) else None,
        "metadata_fields_in": int(ok["metadata_fields_in"].sum()) if len(ok) else 0,
        "metadata_fields_left": int(ok["metadata_fields_left"].sum()) if len(ok) else 0,
        "methods": {str(k): int(v) for k, v in methods.items()},  # generated vs fallback operators, per face
        "pose_measured_faces": int(len(posed)),
        "redetected_fraction": float(posed["redetected"].astype(bool).mean()) if len(posed) else None,
        "median_pose_error_deg": float(pose_error.median()) if len(pose_error) else None,
        "p95_pose_error_deg": float(pose_error.quantile(0.95)) if len(pose_error) else None,
    }


def plots(images: pd.DataFrame, faces: pd.DataFrame, same_person: float) -> dict[str, str]:
    """Figures as base64 PNG: charts of numbers only."""
    from anonymizer.pyplot import plt

    out = {}
    primary = faces[faces["source"] == "primary"] if len(faces) else faces
    d = primary["reid_distance"].dropna() if len(primary) else pd.Series(dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(d, bins=30, color="#4a7bb7")
    ax.axvline(same_person, color="#c0392b", linestyle="--", label=f"same person < {same_person}")
    ax.set_xlabel("embedding distance, original ↔ anonymized face")
    ax.set_ylabel("faces")
    ax.legend()
    ax.set_title("Naive re-identification (higher is safer)")
    out["reid_histogram"] = png(fig)
    plt.close(fig)
    ok = images[images["error"].isna()] if len(images) else images
    if len(ok):
        # One bar per image up to _MAX_BARS; beyond that the images with the most faces (memory stays flat).
        ok = ok.nlargest(_MAX_BARS, "auditor_faces") if len(ok) > _MAX_BARS else ok
        fig, ax = plt.subplots(figsize=(7, 0.25 * len(ok) + 1.2))
        # Side by side, not overlaid: each count readable on its own; the uncovered ones are part of the auditor's.
        y = np.arange(len(ok))
        ax.barh(y - 0.2, ok["faces_anonymized"], height=0.4, color="#4a7bb7", label="anonymized (primary detector)")
        ax.barh(y + 0.2, ok["auditor_faces"], height=0.4, color="#f0ad4e", label="found by auditor")
        ax.barh(y + 0.2, ok["uncovered_faces"], height=0.4, color="#c0392b", label="auditor faces not covered")
        ax.set_yticks(y, ok["key"], fontsize=7, parse_math=False)  # keys are text: a '$' is not math
        ax.set_xlabel("faces")
        ax.legend(fontsize=7)
        ax.set_title("Faces per image" + (f" (the {_MAX_BARS} with most auditor faces)" if len(images) > _MAX_BARS else ""))
        out["faces_per_image"] = png(fig)
        plt.close(fig)
    return out


def sample_grid(outputs: list[tuple[str, bytes]], width: int = 320) -> dict[str, str]:
    """A few released (anonymized) outputs, downscaled: what the dataset now looks like. Never originals, and
    never the outputs of a run that failed its checks (they are what the checks refused)."""
    from PIL import Image

    from anonymizer.pyplot import plt

    if not outputs:
        return {}
    cols = min(3, len(outputs))
    rows = -(-len(outputs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (key, data) in zip(axes.flat, outputs):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.thumbnail((width, width))
        ax.imshow(img)
        ax.set_title(key, fontsize=7, parse_math=False)
    fig.suptitle("Sample of anonymized outputs")
    out = {SAMPLE_FIGURE: png(fig)}
    plt.close(fig)
    return out


def attack_figures(attack: dict) -> dict[str, str]:
    """DET curves of the naive and parrot protocols from an `anonymizer eval reid` result (its JSON)."""
    from anonymizer.pyplot import plt

    cmap = plt.get_cmap("tab10")
    out = {}
    for proto in ("naive", "parrot"):
        curves = []
        if attack.get("clean", {}).get("det"):
            det = attack["clean"]["det"]
            curves.append(("clean (no anonymization)", det["fmr"], det["fnmr"], "k"))
        for i, c in enumerate(attack.get("configs", [])):
            det = c.get("protocols", {}).get(proto, {}).get("det")
            if det:
                curves.append((f"{c['operator']}@{c['strength']:g}", det["fmr"], det["fnmr"], cmap(i % 10)))
        out[f"det_{proto}"] = det_chart(curves, f"DET, {proto} protocol (lower-left = attacker succeeds)")
    return out


def _fmt(value: object) -> object:
    return f"{value:.4g}" if isinstance(value, float) else value


def _evidence_text(check: dict) -> str:
    """What an auditor needs to see behind an observed value: counts and the offending rows."""
    ev = check.get("evidence") or {}
    parts = []
    if "element_count" in ev:
        parts.append(f"{ev.get('unexpected_count', 0)} of {ev['element_count'] - (ev.get('missing_count') or 0)} rows "
                     f"outside the bound ({ev.get('missing_count') or 0} not scored)")
    elif "rows" in ev:
        parts.append(f"{ev['rows']} rows")
    rows = ev.get("offending_rows") or []
    if rows:
        shown = ", ".join(
            f"{r.get('key', '?')}=" + cell(next((v for k, v in r.items() if k != "key"), None)) for r in rows[:10])
        more = (ev.get("offending_row_count") or ev.get("unexpected_count") or len(rows)) - min(10, len(rows))
        parts.append("offending: " + shown + (f" (+{more} more)" if more > 0 else ""))
    return "; ".join(parts)


def auditor_record(name: str, params: dict) -> dict:
    """The policy's auditor and its measured strength (anonymizer.detect.strength), for report.json and the
    sentence printed beside the uncovered-faces check."""
    from anonymizer.detect.strength import auditor_strength, summary

    entry = auditor_strength(name, params)
    return {"name": name, "params": params, "strength": entry, "summary": summary(name, entry)}


def _policy_settings(report: dict) -> dict:
    """The settings of the policy the run used (its canonical YAML), or {} where the report lacks them."""
    import yaml

    try:
        data = yaml.safe_load(report["policy"]["text"])
    except (KeyError, TypeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _auditor(report: dict) -> dict | None:
    if report.get("auditor"):
        return report["auditor"]
    a = (_policy_settings(report).get("detection") or {}).get("auditor")
    return auditor_record(a["name"], a.get("params") or {}) if isinstance(a, dict) and a.get("name") else None


def _licences(report: dict) -> str:
    """Every model file's licence, first thing after the verdict: what the release may be used for."""
    rows, seen = [], set()
    for m in report.get("models", []):
        key = (m.get("name"), m.get("file"))
        if key not in seen:
            seen.add(key)
            rows.append({"model": m.get("name"), "file": m.get("file"), "used by": m.get("component"),
                         "licence class": m.get("licence_class", "unknown"), "licence": m.get("licence")})
    accepted = ", ".join(["permissive", *(_policy_settings(report).get("accept_licences") or [])])
    return (f'<h2 id="licences">Model licences</h2><p>Licence classes this policy accepts: {html.escape(accepted)} '
            "(anything else refuses the run before it starts).</p>"
            + html_table(rows, ["model", "file", "used by", "licence class", "licence"]))


def _checks_table(checks: list[dict], docs_link: str | None, notes: dict[str, str] | None = None) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("check", "result", "threshold", "observed", "evidence", "protects", "expectation"))
    body = []
    for c in checks:
        ok = c["success"]
        body.append(
            f'<tr class="{"pass" if ok else "fail"}"><td>{html.escape(c["name"])}</td>'
            f'<td class="result">{"pass" if ok else "FAIL"}</td><td>{html.escape(cell(c["threshold"]))}</td>'
            f'<td>{html.escape(cell(c["observed"]))}</td>'
            f'<td>{html.escape("; ".join(t for t in (_evidence_text(c), (notes or {}).get(c["name"], "")) if t))}</td>'
            f'<td>{html.escape(c["protects"])}</td><td><code>{html.escape(c["expectation"])}</code></td></tr>')
    link = (f'<p>Great-expectations Data Docs for this validation (suites, every expectation and its result): '
            f'<a href="{html.escape(docs_link)}">{html.escape(docs_link)}</a> (in the report folder).</p>') if docs_link else ""
    return f'<table id="checks-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{link}'


_REID_FIGURES = ("reid_histogram", "score_histograms")


def _attack_section(report: dict, figures: dict[str, str]) -> str:
    """Calibration of the attacker and, when attached, the naive/reverse/parrot evaluation (anonymizer eval reid)."""
    out = []
    cal = report.get("calibration")
    same = (report.get("thresholds") or {}).get("same_person_distance")
    if cal:
        out.append(
            f"<p>Decision distance {cal['threshold']:.4f}, calibrated at FAR {cal['far']:g} on {cal.get('impostor_pairs', '?')} "
            f"impostor pairs of LFW originals (TAR there {cal.get('tar_at_threshold', float('nan')):.3f}); the library default "
            f"{cal.get('library_threshold', '')} accepts {cal.get('fmr_at_library_threshold', float('nan')):.4f} of impostor pairs.</p>")
    else:
        naive = next((c for c in report["verdict"]["checks"] if c["name"] == "naive_reidentification"), None)
        bound = f"decision distance {same}" if same is not None else (naive or {}).get("threshold", "see the policy")
        out.append("<p>Naive re-identification bound: " + html.escape(str(bound))
                   + " (from the policy; its comment records how the distance was calibrated).</p>")
    attack = report.get("attack_evaluation")
    if attack:
        rows = attack.get("table") or []
        cols = list(rows[0]) if rows else []
        out.append(f"<p>Attack protocols on {attack.get('dataset', {}).get('identities', '?')} LFW identities "
                   f"(<code>anonymizer eval reid</code>; rank-1 chance {1 / max(1, attack.get('dataset', {}).get('gallery', 1)):.4f}):</p>")
        out.append(html_table(rows, cols))
    else:
        out.append("<p>No attack evaluation is attached to this run: <code>anonymizer eval reid --policy POLICY</code> measures "
                   "the naive, reverse and parrot protocols for the policy's operator on LFW.</p>")
    figs = "".join(figure_html(k, b) for k, b in figures.items() if k in _REID_FIGURES or k.startswith("det_"))
    out.append(figs)
    return "".join(out)


def _mode_html(mode: dict | None) -> str:
    """Anonymised or pseudonymised: what a compliance reader must know first about a release."""
    if not mode:
        return ""
    return (f'<p id="mode"><strong>Release mode: {html.escape(mode["mode"])}</strong> — '
            f'{html.escape(mode.get("note", ""))}.</p>')


def _linking_html(linking: dict | None) -> str:
    """A keyed run: how many people were linked and what the key makes of them (counts, never faces)."""
    if not linking:
        return ""
    figures = (f'{linking.get("people", "?")} people ({linking.get("people_new", "?")} new this run), '
               f'{linking.get("faces_linked", "?")} faces linked by {linking.get("recognizer", "?")} at distance '
               f'{linking.get("threshold", "?")}, {linking.get("virtual_identities", "?")} virtual identities in the '
               f'bank; identity key {linking.get("key_id", "?")}')
    if linking.get("read_as"):
        read_as = "; ".join(f"{n} {label}" for label, n in linking["read_as"].items())
        figures += (f"; each person shown as a virtual person who reads as they do, or as near as the bank "
                    f"allows (people read as: {read_as})")
    return (f'<p id="linking"><strong>Keyed virtual identities</strong> — {html.escape(figures)}. '
            f'{html.escape(linking.get("note", ""))}</p>')


def _execution_html(execution: dict | None, shards: list[dict]) -> str:
    """Where the shards ran and why: Ray's actors, or threads in the run's own process; how many, and each
    actor's share of a GPU."""
    if not execution:
        return ""
    where = {"ray": "Ray actors", "local": "threads in the run's own process"}.get(execution["executor"],
                                                                                execution["executor"])
    workers = len({s["worker"] for s in shards if s.get("worker") and not s.get("resumed")})
    shares = [s["gpu_share"] for s in shards if s.get("gpu_share")]
    held = f", each holding {max(shares):g} of a GPU" if shares else ""
    ran = f": {workers} of them{held}" if workers else ""
    return f"<p>Run on {html.escape(where)} ({html.escape(execution['why'])}){ran}.</p>"


def render_html(report: dict, figures: dict[str, str]) -> str:
    """The audit report: verdict first, then each check with its threshold, observation and evidence."""
    v = report["verdict"]
    released = report["released"]
    colour = "#1e7e34" if released else "#c0392b"
    title = "RELEASED" if released else "NOT RELEASED"
    objects = report.get("objects", [])
    quarantined = [o for o in objects if o.get("status") == "quarantined"]
    policy = report["policy"]
    lineage = report.get("lineage")
    run_figs = "".join(figure_html(k, b) for k, b in figures.items() if not (k in _REID_FIGURES or k.startswith("det_")))
    failed = [c["name"] for c in v["checks"] if not c["success"]]
    summary = (f"{len(v['checks']) - len(failed)} of {len(v['checks'])} checks passed"
               + (f"; failed: {', '.join(failed)}" if failed else "")
               + (f"; validation error: {v['error']}" if v.get("error") else ""))
    shard_cols = ["shard", "images", "failed", "faces", "seconds", "worker", "attempts", "resumed"]
    sections = [("checks", "Checks"), ("reid", "Re-identification risk"), ("counts", "Counts and metrics"),
                ("quarantine", "Quarantined objects"), ("objects", "Every input object"), ("shards", "Shards"),
                ("lineage", "Lineage"), ("models", "Models"), ("software", "Software"), ("policy", "Policy")]
    toc = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in sections if a != "lineage" or lineage)
    auditor = _auditor(report)
    notes = {"uncovered_faces": auditor["summary"]} if auditor else {}
    auditor_note = (f'<p id="auditor-strength">Uncovered faces are those the auditor ({html.escape(auditor["name"])}, '
                    f'<code>{html.escape(json.dumps(auditor["params"]))}</code>) finds and no mask covers; the check is '
                    f'only as strong as the auditor: {html.escape(auditor["summary"])}.</p>') if auditor else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Anonymization audit report {html.escape(report['run_id'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}
th{{background:#f4f4f4}}tr.fail td.result{{color:#fff;background:#c0392b;font-weight:bold}}tr.pass td.result{{color:#1e7e34}}
.verdict{{padding:1em;color:#fff;background:{colour};font-size:1.3em}}code,pre{{background:#f4f4f4}}
pre{{padding:1em;overflow:auto;font-size:12px;white-space:pre-wrap}}img{{max-width:100%}}
@media print{{.verdict{{-webkit-print-color-adjust:exact;print-color-adjust:exact}}h2{{break-after:avoid}}figure{{break-inside:avoid}}}}</style></head><body>
<div class="verdict" id="verdict">{title}: {html.escape(v['reason'])}</div>
<h1>Anonymization audit report</h1>
<p id="summary">{html.escape(summary)}. Run <code>{html.escape(report['run_id'])}</code>, {html.escape(str(report.get('started', '')))} →
{html.escape(str(report.get('finished', '')))}. Source <code>{html.escape(str(report.get('source', '')))}</code>;
{html.escape(str(report.get('destination_note', '')))}. Policy <code>{html.escape(policy['name'])}</code>, sha256 <code>{policy['sha256']}</code>.</p>
{_mode_html(report.get('mode'))}
{_linking_html(report.get('linking'))}
{_licences(report)}
<nav>{toc}</nav>
<h2 id="checks">Checks</h2>
<p>Each check is an expectation generated from the policy's thresholds; the run is released only if every one passes
and validation completed (a crash or a missing metric fails the run).</p>
{_checks_table(v['checks'], v.get('data_docs'), notes)}
{auditor_note}
<h2 id="reid">Re-identification risk</h2>{_attack_section(report, figures)}
<h2 id="counts">Counts and metrics</h2>{html_table([report.get('counts', {})], list(report.get('counts', {})))}
{html_table([{"metric": k, "value": "not measured" if x is None else _fmt(x)} for k, x in report.get('metrics', {}).items()], ['metric', 'value'])}
{run_figs}
<h2 id="quarantine">Quarantined objects ({len(quarantined)})</h2>{html_table(quarantined, ['key', 'reason'])}
<h2 id="objects">Every input object ({len(objects)})</h2>{html_table(objects, ['key', 'status', 'reason'])}
<h2 id="shards">Shards ({len(report.get('shards', []))})</h2>{_execution_html(report.get('execution'), report.get('shards', []))}{html_table([{**s, "seconds": _fmt(s.get("seconds"))} for s in report.get('shards', [])], shard_cols)}
{f'<h2 id="lineage">Lineage</h2>{html_table([{"item": k, "value": x} for k, x in lineage.items()], ["item", "value"])}' if lineage else ''}
<h2 id="models">Models</h2>{html_table(report.get('models', []), ['component', 'name', 'file', 'sha256', 'licence_class', 'licence'])}
<h2 id="software">Software</h2>{html_table([{"package": k, "version": x} for k, x in report.get('software', {}).items()], ['package', 'version'])}
<h2 id="policy">Policy</h2><p><code>{html.escape(policy['name'])}</code>, sha256 <code>{policy['sha256']}</code>:</p><pre>{html.escape(policy['text'])}</pre>
<p id="pixels">{_pixels_note(figures)}</p>
</body></html>"""


def _pixels_note(figures: dict[str, str]) -> str:
    if SAMPLE_FIGURE in figures:
        return (f"This report contains measurements, charts and {SAMPLE_FIGURE.replace('_', ' ')} (downscaled "
                "thumbnails of released images): no pixels of any original image.")
    return "This report contains measurements and charts only: no pixels of any original or output image."


def find_chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


def chromium_args(user_data_dir: str) -> list[str]:
    """Headless, no network of its own, no profile left behind."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-extensions", "--no-pdf-header-footer",
            f"--user-data-dir={user_data_dir}"]


def render_pdf(html_bytes: bytes, chromium: str | None = None, timeout: float = 120) -> bytes | None:
    """report.pdf printed by headless Chromium; None when no Chromium is installed (the HTML is the record)."""
    import subprocess
    import tempfile
    from pathlib import Path

    chromium = chromium or find_chromium()
    if not chromium:
        return None
    with tempfile.TemporaryDirectory(prefix="anonymizer-pdf-") as tmp:
        src, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        src.write_bytes(html_bytes)
        subprocess.run([chromium, *chromium_args(str(Path(tmp) / "profile")), f"--print-to-pdf={pdf}", src.as_uri()],
                       capture_output=True, timeout=timeout, check=False)
        return pdf.read_bytes() if pdf.is_file() and pdf.stat().st_size else None


def to_json(report: dict) -> bytes:
    return json.dumps(report, indent=2, default=str, ensure_ascii=False).encode()
