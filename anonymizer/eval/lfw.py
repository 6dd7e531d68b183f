"""LFW as evaluation and training data: identities split by a pure function of their name.

The split is sha256(identity) → one of 1000 buckets: the first `holdout × 1000` are held out for
evaluation, the next `calibration × 1000` calibrate decision thresholds (recognizers' distances at a
false-accept rate), the rest train. So thresholds are never set on the identities they are evaluated on,
and neither set is trained on; the split does not depend on which images are present, on the order of
listing, or on `limit`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_HOLDOUT = 0.1
DEFAULT_CALIBRATION = 0.1
SPLITS = ("eval", "calibration", "train")
SPLIT_RULE = ("sha256(identity)[:8] little-endian % 1000: < holdout*1000 → eval, "
              "< (holdout + calibration)*1000 → calibration, else train")


def default_lfw_root() -> Path:
    shared = Path(os.environ.get("ANONYMIZER_SHARED", Path.cwd().parent / "shared"))
    return shared / "data" / "lfw" / "images"


def split_of(identity: str, holdout: float = DEFAULT_HOLDOUT, calibration: float = DEFAULT_CALIBRATION) -> str:
    """The identity's split: "eval", "calibration" or "train" (SPLIT_RULE)."""
    bucket = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "little") % 1000
    if bucket < round(holdout * 1000):
        return "eval"
    return "calibration" if bucket < round((holdout + calibration) * 1000) else "train"


def list_images(root: str | os.PathLike, split: str = "train", holdout: float = DEFAULT_HOLDOUT,
                limit: int | None = None) -> list[tuple[str, Path]]:
    """(identity, path) of the split's images, identities and files in sorted order, at most `limit`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LFW images not found at {root} (images/<Name>/<Name>_NNNN.jpg)")
    out: list[tuple[str, Path]] = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        if split != "all" and split_of(person.name, holdout) != split:
            continue
        for f in sorted(person.glob("*.jpg")):
            out.append((person.name, f))
            if limit is not None and len(out) >= limit:
                return out
    return out


def split_summary(root: str | os.PathLike, holdout: float = DEFAULT_HOLDOUT) -> dict:
    """Identity counts per split and a hash of the held-out identity list (for the model card)."""
    names = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    held = [n for n in names if split_of(n, holdout) == "eval"]
    return {"rule": SPLIT_RULE, "holdout": holdout, "calibration": DEFAULT_CALIBRATION,
            "identities": len(names), "eval_identities": len(held),
            "calibration_identities": sum(split_of(n, holdout) == "calibration" for n in names),
            "eval_identities_sha256": hashlib.sha256("\n".join(held).encode()).hexdigest()}
