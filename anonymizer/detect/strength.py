"""How strong an auditor is: its measured recall by face size, looked up by its exact configuration.

The uncovered-faces check can only report faces its auditor finds; "0 uncovered" means little from an
auditor that finds a sixth of the faces. `anonymizer eval detection --auditors ... --write-strength`
measures candidates on the WIDER val subset (at a bounded false-positive rate) and on the photos (against
the default detectors' faces) and writes auditor_strength.json beside this module; the audit report prints
the entry of the policy's auditor, or says that its configuration was never measured.

An entry is keyed by the detector's name and its full parameters at measurement time (the factory's defaults
filled in). A policy's auditor finds the entry whose every parameter it matches, spelt out or by default; a
parameter the detector gained after the measurement counts only at its default (what the detector did
before it existed). Any other difference, a changed default included, finds none.
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from anonymizer.detect.base import DETECTORS

STRENGTH_FILE = Path(__file__).with_name("auditor_strength.json")
_NOT_PARAMS = ("model_dir", "device")  # where and on what it runs: no effect on what it finds


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    return value


def defaults(name: str) -> dict:
    """The detector factory's parameter defaults (numbers as floats, sequences as lists)."""
    signature = inspect.signature(DETECTORS.factory(name))
    return _plain({p.name: p.default for p in signature.parameters.values()
                   if p.default is not p.empty and p.name not in _NOT_PARAMS})


def full_params(name: str, params: dict) -> dict:
    """`params` with the detector factory's defaults filled in, numbers as floats, sequences as lists."""
    return {**defaults(name), **_plain({k: v for k, v in params.items() if k not in _NOT_PARAMS})}


def auditor_key(name: str, params: dict) -> str:
    return json.dumps({"name": name, "params": full_params(name, params)}, sort_keys=True)


@lru_cache(maxsize=4)
def _entries(path: str) -> dict:
    file = Path(path)
    return json.loads(file.read_text())["auditors"] if file.is_file() else {}


def auditor_strength(name: str, params: dict, path: str | Path = STRENGTH_FILE) -> dict | None:
    """The measured entry for this auditor configuration (module docstring), or None where it was never measured."""
    try:
        now, base = full_params(name, params), defaults(name)
    except KeyError:  # not a registered detector
        return None
    for key, entry in _entries(str(path)).items():
        measured = json.loads(key)
        if measured["name"] != name:
            continue
        then = measured["params"]
        if all(k in now and now[k] == v for k, v in then.items()) and all(k in then or now[k] == base.get(k) for k in now):
            return entry
    return None


def summary(name: str, entry: dict | None) -> str:
    """One sentence for the audit report."""
    if not entry:
        return (f"auditor {name}: this configuration's recall was never measured (anonymizer eval detection "
                "--auditors), so the uncovered-faces check says nothing about how many faces it would miss")
    w = entry["wider"]["recall"]
    text = (f"auditor {name} finds {_pct(w['>=32'])} of faces >=32 px, {_pct(w['16-32'])} 16-32 px, "
            f"{_pct(w['<16'])} <16 px on the WIDER val subset ({entry['wider']['images']} images, "
            f"{entry['wider']['fp_per_image']:.2f} false positives per image)")
    photos = entry.get("photos")
    if photos:
        text += (f"; on {photos['images']} real photos it finds {_pct(photos['recall'])} of the faces the default "
                 f"detectors find ({_pct(photos['recall_by_size']['>=32'])} of those >=32 px)")
    return text


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"
