"""Charts and tables shared by the audit report and the evaluation pages: numbers only, never pixels."""

from __future__ import annotations

import base64
import html
import io
import json
from statistics import NormalDist
from typing import Sequence

DET_TICKS = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95)

SAMPLE_FIGURE = "sample_anonymized_outputs"

# What each chart shows, printed under it (its key stays the image's alt text).
_DET = ("{}: the attacker's false-match rate against its false-non-match rate; a curve toward the lower left is an "
        "attack that succeeds.")
CAPTIONS = {
    "reid_histogram": "Each scored face: the distance between its embedding in the original and in the released "
                      "image (the policy's recognizer, aligned on the original). Left of the dashed line, the "
                      "recognizer would call them the same person.",
    "faces_per_image": "Per image: faces the detectors anonymized, faces the independent auditor found in the "
                       "original, and auditor faces that no mask covers (the policy's max_uncovered_faces bounds them).",
    SAMPLE_FIGURE: "The released images with the most anonymized faces, downscaled: what the dataset now looks like.",
    "score_histograms": "Distances between two photos of one person (genuine) and of two people (impostor), per "
                        "operator and protocol: genuine pairs left of the dashed threshold are people re-identified.",
    "det_naive": _DET.format("Naive protocol (anonymized probes against the original gallery)"),
    "det_reverse": _DET.format("Reverse protocol (original probes against an anonymized gallery)"),
    "det_parrot": _DET.format("Parrot protocol (probes and gallery both anonymized: the attacker anonymizes his "
                              "gallery the same way)"),
}


def figure_html(key: str, png_b64: str) -> str:
    """A chart in a page: its key as the alt text, what it shows (CAPTIONS) under it."""
    return (f'<figure><img alt="{html.escape(key)}" src="data:image/png;base64,{png_b64}">'
            f'<figcaption>{html.escape(CAPTIONS.get(key, key))}</figcaption></figure>')


def png(fig) -> str:
    """A matplotlib figure as base64 PNG, for an <img src="data:..."> in a self-contained page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def probit(xs: Sequence[float]) -> list[float]:
    nd = NormalDist()
    return [nd.inv_cdf(min(max(float(x), 1e-6), 1 - 1e-6)) for x in xs]


def det_chart(curves: Sequence[tuple[str, Sequence[float], Sequence[float], object]], title: str,
              far: float | None = None) -> str:
    """A DET chart (probit axes) of (label, false match rates, false non-match rates, colour) curves."""
    from anonymizer.pyplot import plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for label, fmr, fnmr, colour in curves:
        pts = [(a, b) for a, b in zip(fmr, fnmr) if 0 < a < 1 and 0 < b < 1]
        if pts:
            ax.plot(probit([p[0] for p in pts]), probit([p[1] for p in pts]), color=colour, label=label, lw=1.5)
    pos = probit(DET_TICKS)
    ax.set_xticks(pos, [f"{t:g}" for t in DET_TICKS], fontsize=7)
    ax.set_yticks(pos, [f"{t:g}" for t in DET_TICKS], fontsize=7)
    ax.set_xlim(pos[0], pos[-1])
    ax.set_ylim(pos[0], pos[-1])
    if far is not None:
        ax.axvline(probit([far])[0], color="#888", ls=":", lw=1)
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("false non-match rate (FNMR)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    out = png(fig)
    plt.close(fig)
    return out


def cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def html_table(rows: list[dict], columns: list[str] | None = None, cls: str = "") -> str:
    """Rows as an HTML table; every cell escaped."""
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
