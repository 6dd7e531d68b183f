"""How often the `realistic` profile's replaced faces read as the other sex than the person, with and without
`match_sex`: the apparent-sex probe (anonymizer.bank.apparent_sex) reads each photo face the bank operator
replaced, before and after. Faces the probe leaves undecided before are counted apart, with the side of 1/2
they lean to before and after ("?f->F": leaning to a woman's before, read as a woman's after). Runs the operator
directly on ../shared/data/photos (faces found once by the default detectors), without Ray or Prefect.

    python bench/apparent_sex.py --bank DIR [--out bench/results/apparent_sex.json] [--crops DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def _leaning_alike(pair: str) -> bool:
    """Whether an undecided face ("?f->F", "?m->?m") leans after the way it leaned before."""
    before, after = pair.split("->")
    return before[1] == after[-1].lower()


def main() -> None:
    from anonymizer.anonymize import face_rngs
    from anonymizer.bank.apparent_sex import ApparentSex
    from anonymizer.components import build_operator
    from anonymizer.eval.generation import photo_samples
    from anonymizer.policy import load_policy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "apparent_sex.json")
    ap.add_argument("--crops", type=Path, help="write each undecided face before and after (with match_sex) here")
    args = ap.parse_args()
    policy = load_policy(profile="realistic")
    samples = photo_samples(SHARED / "data" / "photos", policy)
    probe = ApparentSex()
    result: dict = {"bank": args.bank, "faces": {}}
    for match in (False, True):
        op = build_operator(policy, bank=args.bank, match_sex=match)
        pairs: Counter = Counter()
        for s in samples:
            res = op.anonymize(s.rgb, s.faces, face_rngs(policy.seed, s.key, len(s.faces)))
            for face, method in zip(s.faces, res.methods):
                if method == "bank":
                    before = probe.probability(probe.describe(s.rgb, face))
                    after = probe.probability(probe.describe(res.image, face))
                    pairs[f"{_read(probe, before)}->{_read(probe, after)}"] += 1
                    if args.crops and match and probe.decide(before) is None:
                        _save_crops(args.crops, s, face, res.image)
        decided = sum(v for k, v in pairs.items() if not k.startswith("?"))
        other = sum(v for k, v in pairs.items() if k in ("M->F", "F->M"))
        same = sum(v for k, v in pairs.items() if k in ("M->M", "F->F"))
        undecided = {k: v for k, v in pairs.items() if k.startswith("?")}
        row = {"replaced": sum(pairs.values()), "decided_before": decided, "other_sex_after": other,
               "same_after": same, "undecided_before": sum(undecided.values()),
               "undecided_leaning_alike_after": sum(v for k, v in undecided.items() if _leaning_alike(k)),
               "pairs": dict(sorted(pairs.items()))}
        result["faces"]["match_sex" if match else "pose_and_tone_only"] = row
        print(f"match_sex={match}: {row}")
    people = Counter(op.bank_people.of_person.values())  # the last operator built matches sex
    result["bank_people"] = {k or "undecided": v for k, v in people.items()}
    print("bank people:", result["bank_people"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def _read(probe, p: float) -> str:
    """M or F where the probe decides; else ? and the side it leans to, in lower case ("?f")."""
    return probe.decide(p) or "?" + (probe.lean(p) or "?").lower()


def _save_crops(folder: Path, sample, face, after) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    m = int(0.4 * face.size)
    ys = slice(max(0, int(face.y) - m), int(face.y + face.h) + m)
    xs = slice(max(0, int(face.x) - m), int(face.x + face.w) + m)
    pair = [cv2.resize(img[ys, xs], (160, 160)) for img in (sample.rgb, after)]
    name = f"{Path(sample.key).stem}_{int(face.x)}_{int(face.y)}.png"
    cv2.imwrite(str(folder / name), cv2.cvtColor(cv2.hconcat(pair), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
