"""Report: the audit record of a run, as report.json (for machines) and a self-contained report.html
(for a compliance auditor). Neither holds a single pixel of an original image."""

from __future__ import annotations

import base64
import html
import io
import json
import platform
from importlib import metadata

import pandas as pd

PACKAGES = ["anonymizer", "prefect", "ray", "torch", "opencv-python-headless", "great-expectations", "dlib-bin",
            "face-recognition-models", "pyarrow", "numpy", "pillow", "boto3"]


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
    }


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(images: pd.DataFrame, faces: pd.DataFrame, same_person: float) -> dict[str, str]:
    """Figures as base64 PNG: charts of numbers only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out["reid_histogram"] = _png(fig)
    plt.close(fig)
    ok = images[images["error"].isna()] if len(images) else images
    if len(ok):
        fig, ax = plt.subplots(figsize=(7, 0.25 * len(ok) + 1.2))
        y = range(len(ok))
        ax.barh(y, ok["faces_anonymized"], color="#4a7bb7", label="anonymized (primary detector)")
        ax.barh(y, ok["auditor_faces"], color="#f0ad4e", alpha=0.6, label="found by auditor")
        ax.barh(y, ok["uncovered_faces"], color="#c0392b", label="auditor faces not covered")
        ax.set_yticks(list(y), ok["key"], fontsize=7)
        ax.set_xlabel("faces")
        ax.legend(fontsize=7)
        ax.set_title("Faces per image")
        out["faces_per_image"] = _png(fig)
        plt.close(fig)
    return out


def _fmt(value: object) -> object:
    return f"{value:.4g}" if isinstance(value, float) else value


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict, figures: dict[str, str]) -> str:
    v = report["verdict"]
    colour = "#1e7e34" if report["released"] else "#c0392b"
    title = "RELEASED" if report["released"] else "NOT RELEASED"
    checks = [{**c, "result": "pass" if c["success"] else "FAIL"} for c in v["checks"]]
    figs = "".join(f'<figure><img alt="{k}" src="data:image/png;base64,{b}"></figure>' for k, b in figures.items())
    objects = report["objects"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Anonymization audit report {html.escape(report['run_id'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
.verdict{{padding:1em;color:#fff;background:{colour};font-size:1.3em}}code,pre{{background:#f4f4f4}}
pre{{padding:1em;overflow:auto;font-size:12px}}</style></head><body>
<div class="verdict" id="verdict">{title}: {html.escape(v['reason'])}</div>
<h1>Anonymization audit report</h1>
<p>Run <code>{html.escape(report['run_id'])}</code>, {html.escape(report['started'])} → {html.escape(report['finished'])}.
Source <code>{html.escape(report['source'])}</code>; {html.escape(report['destination_note'])}.</p>
<h2>Checks (policy <code>{html.escape(report['policy']['name'])}</code>)</h2>
{_table(checks, ['name', 'result', 'observed', 'threshold', 'protects', 'expectation'])}
<h2>Counts</h2>{_table([report['counts']], list(report['counts']))}
<h2>Metrics</h2>{_table([{"metric": k, "value": _fmt(v)} for k, v in report['metrics'].items()], ['metric', 'value'])}
<h2>Figures</h2>{figs}
<h2>Every input object ({len(objects)})</h2>{_table(objects, ['key', 'status', 'reason'])}
<h2>Shards</h2>{_table([{**s, "seconds": _fmt(s.get("seconds"))} for s in report['shards']], ['shard', 'images', 'failed', 'faces', 'seconds', 'worker', 'resumed'])}
<h2>Models</h2>{_table(report['models'], ['component', 'name', 'file', 'sha256', 'licence'])}
<h2>Software</h2>{_table([report['software']], list(report['software']))}
<h2>Policy</h2><p>sha256 <code>{report['policy']['sha256']}</code></p><pre>{html.escape(report['policy']['text'])}</pre>
<p>This report contains measurements and charts only: no pixels of any original image.</p>
</body></html>"""


def to_json(report: dict) -> bytes:
    return json.dumps(report, indent=2, default=str, ensure_ascii=False).encode()
