"""Which group the face bank operator's kept bank faces come from, as `realistic` runs it: bank heads that
cover the ring around the face outline (at least COVER_MIN of it) or leave part of it to the photo's mirrored
surroundings (a patch beside the person's hair). Counts over the photos' and held-out LFW faces the operator
replaces; prints a table, writes JSON. Runs without Ray or Prefect.

    python bench/bank_cover.py [--bank DIR] [--lfw 100] [--out bench/results/bank_cover.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import cv2

from generation_throughput import REPO, load_sets

GROUPS = {0: "covers", 1: "patch"}


def counted(op, samples) -> Counter:
    """The group of each kept bank face: `by_cover` tags what it yields, `render` which pixels are whose."""
    from anonymizer.anonymize import face_rngs

    tags, rendered, counts = {}, {}, Counter()
    by_cover, render, choose = op.by_cover, op.render, op.choose

    def tagging(*args, **kwargs):
        for item in by_cover(*args, **kwargs):
            tags[item[0]] = item[1]
            yield item

    def remembering(base, site, k):
        pixels, alpha = render(base, site, k)
        rendered[id(pixels)] = k
        return pixels, alpha

    def choosing(out, site, ranked, refs, blurred):
        tags.clear()
        kept = choose(out, site, ranked, refs, blurred)
        if kept is not None and site.region is not None:
            counts[GROUPS.get(tags.get(rendered[id(kept[0])]), "untagged")] += 1
        rendered.clear()
        return kept

    op.by_cover, op.render, op.choose = tagging, remembering, choosing
    for s in samples:
        op.anonymize(s.rgb, s.faces, face_rngs(0, s.key, len(s.faces)))
    return counts


def main() -> None:
    from anonymizer.components import build_operator
    from anonymizer.policy import load_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", default="faces", help="a bank name or directory (default: the default bank)")
    ap.add_argument("--lfw", type=int, default=100, help="held-out LFW faces")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bank_cover.json")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    op = build_operator(load_policy(profile="realistic"), bank=args.bank)
    result = {name: dict(counted(op, samples)) for name, samples in load_sets(args.lfw).items()}
    print("| set | " + " | ".join(GROUPS.values()) + " |\n|---|" + "---|" * len(GROUPS))
    for name, counts in result.items():
        print(f"| {name} | " + " | ".join(str(counts.get(g, 0)) for g in GROUPS.values()) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bank": args.bank, "counts": result}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
