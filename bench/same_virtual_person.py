"""How often two photos of one person show the same virtual person under the `realistic` bank operator.

Two anonymized photos that show one bank person match each other for any recognizer, however well each
hides the person: the plainest way to link them. A face's bank person is drawn among the few nearest in pose
that read as its sex and age and alike in skin tone, so two photos of one person draw from overlapping pools; the
rate falls as the bank holds more people of each sex and tone. Beside it, how many bank people each face may be
given (`people_open_to`: median, p10) and the rate that drawing uniformly among them predicts (the mean of 1/n):
where the two agree, only more people of each kind lower it. Held-out LFW identities with at least two
photos, up to `--per` photos each (every pair counted), the face nearest the centre of each; the operator as
POLICY sets it (e.g. one extending `realistic` with another bank), without Ray or Prefect.

    python bench/same_virtual_person.py --policy POLICY [--per 5] [--out bench/results/same_virtual_person.json]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def main() -> None:
    from anonymizer.anonymize import face_rngs
    from anonymizer.components import build_operator
    from anonymizer.detect import build_detector
    from anonymizer.eval.generation import _read_rgb, central_face, same_virtual_person
    from anonymizer.eval.lfw import list_images
    from anonymizer.policy import load_policy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--per", type=int, default=5, help="photos per person, at most")
    ap.add_argument("--lfw", type=Path, default=SHARED / "data" / "lfw" / "images")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "same_virtual_person.json")
    args = ap.parse_args()
    policy = load_policy(args.policy)
    op = build_operator(policy)
    detector = build_detector("yunet", {"scales": [1.0]}, policy.model_dir)
    photos = defaultdict(list)
    for identity, path in list_images(args.lfw, "eval"):
        photos[identity].append(path)
    rows = []
    for identity, paths in sorted(photos.items()):
        for path in paths[:args.per] if len(paths) >= 2 else ():
            rgb = _read_rgb(path)
            face = central_face(detector.detect(rgb), rgb.shape[:2])
            if face is None:
                continue
            key = f"lfw/{identity}/{path.name}"
            virtual = op.anonymize(rgb, [face], face_rngs(policy.seed, key, 1)).virtual
            rows.append({"key": key, "virtual": virtual[0] if virtual else None,
                         "open_to": op.people_open_to(rgb, face)})
    open_to = np.array([r["open_to"] for r in rows if r["open_to"]], np.float64)
    result = {"policy": args.policy, "bank": str(op.bank.root), "bank_people": len(op.bank.identities),
              **(same_virtual_person(rows) or {"pairs": 0, "same": 0, "rate": None}),
              "people_open_to": {"median": float(np.median(open_to)), "p10": float(np.percentile(open_to, 10)),
                                 "expected_rate": round(float(np.mean(1 / open_to)), 4)} if open_to.size else None}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
