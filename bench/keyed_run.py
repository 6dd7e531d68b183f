"""Keyed virtual faces through the whole run: what linking costs, and whether one person shows one face.

A folder of LFW images of held-out (`eval` split) people, `--images` each, goes through the realistic
profile (the bank operator; `--bank`, else a StyleGAN bank of `--bank-people` people built here) twice with
the local engine: without a key, then with `--identity-key`. Printed and written as JSON: each run's wall
time, the linking pass and the driver's clustering, faces replaced from the bank, and for the keyed run
the share of a person's bank faces that show the person's most frequent virtual identity, the number of
people linked against the number labelled, pairs of labelled people that show one virtual identity, and,
for people whose apparent sex or skin tone is labelled (training/data/lfw_apparent_sex.tsv and
lfw_skin_tone.tsv, held-out rows; `--labelled` takes only those), how many show a virtual person who reads as
they do: of their sex, of their skin-tone band (light, medium, dark), and of a band next to theirs; and for
every person, whether their virtual person reads in the age group their photos read in on average
(anonymizer.measure.apparent_age, as the linking pass reads them).

    python bench/keyed_run.py [--people 20] [--images 3] [--labelled] [--bank DIR] [--out bench/results/keyed_run.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--images", type=int, default=3, help="images per person")
    ap.add_argument("--labelled", action="store_true", help="held-out people whose apparent sex is labelled")
    ap.add_argument("--bank", type=Path, help="a face bank directory (default: build a StyleGAN one here)")
    ap.add_argument("--bank-people", type=int, default=32, help="enough to fit pose and expression views")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "keyed_run.json")
    args = ap.parse_args()
    os.environ.setdefault("ANONYMIZER_MODEL_DIR", str(SHARED / "models"))

    import cv2
    import numpy as np
    import pandas as pd

    from anonymizer.anonymize.bankface import BankFace
    from anonymizer.bank.tone import AGE_MARKS
    from anonymizer.faces import Face
    from anonymizer.measure.apparent_age import AGE_GROUP_NAMES, AgeReader, age_group
    from anonymizer.bank import build_from_stylegan
    from anonymizer.eval.lfw import split_of
    from anonymizer.pipeline import run_pipeline

    lfw = SHARED / "data" / "lfw" / "images"
    ager = AgeReader()
    def held_out(name: str) -> dict[str, str]:
        rows = (REPO / "training" / "data" / name).read_text().splitlines()[1:]
        return {person: label for person, label, use in (row.split("\t") for row in rows) if use == "heldout"}

    read_as, tone_of = held_out("lfw_apparent_sex.tsv"), held_out("lfw_skin_tone.tsv")
    people = [p for p in sorted(lfw.iterdir()) if split_of(p.name) == "eval" and len(list(p.iterdir())) >= args.images
              and (p.name in read_as or p.name in tone_of or not args.labelled)]
    people = people[: args.people]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        for p in people:
            for f in sorted(p.iterdir())[: args.images]:
                shutil.copy(f, src / f.name)
        bank = args.bank
        if bank is None:
            t0 = time.perf_counter()
            bank = build_from_stylegan(tmp / "bank", n=args.bank_people, seed=0)
            print(f"bank: {args.bank_people} StyleGAN people in {time.perf_counter() - t0:.0f} s")
        policy = tmp / "keyed.yaml"
        policy.write_text(f"extends: realistic\nname: realistic-bench\n"
                          f"anonymization: {{operator: {{name: bank, params: {{bank: '{bank}'}}}}}}\n")
        key = tmp / "id.key"
        key.write_bytes(os.urandom(32))
        runs = {}
        for name, identity_key in (("plain", None), ("keyed", f"file:{key}")):
            t0 = time.perf_counter()
            out = run_pipeline(str(src), str(tmp / name), policy=str(policy), engine="local", workers=args.workers,
                               run_id=name, identity_key=identity_key)
            wall = time.perf_counter() - t0
            staging = tmp / f"{name}.staging" / name
            faces = pd.read_parquet(staging / "metrics" / "faces.parquet")
            faces = faces[faces["source"] == "primary"]
            linking = out.report.get("linking") or {}
            link_pass = sum(json.loads(m.read_text())["seconds"] for m in staging.glob("shards/*/_LINKED"))
            runs[name] = {"wall_s": round(wall, 1), "released": out.released, "reason": out.verdict.reason,
                          "methods": faces["method"].value_counts().to_dict(), "images": len(people) * args.images,
                          "faces": len(faces), "bank_faces": int((faces["method"] == "bank").sum()),
                          "link_pass_worker_s": round(link_pass, 1), "clustering_s": linking.get("seconds"),
                          "people_linked": linking.get("people")}
            if identity_key:
                # The central face of each LFW image is the named person: the face with the largest box.
                main_faces = faces.loc[faces.groupby("key")["size"].idxmax()]
                bank_faces = main_faces[main_faces["method"] == "bank"].copy()
                bank_faces["person"] = bank_faces["key"].str.rsplit("_", n=1).str[0]
                per_person = bank_faces.groupby("person")["virtual_identity"]
                top = per_person.agg(lambda s: s.value_counts().iloc[0]).sum()
                shown = per_person.agg(lambda s: set(s.dropna().astype(int)))
                sharing = sum(bool(a & b) for a, b in itertools.combinations(shown.tolist(), 2))
                pairs = len(shown) * (len(shown) - 1) // 2
                bank_reads = BankFace.virtual_identities({"bank": str(bank), "match_sex": True, "match_age": True,
                                                          "tone_reading": "descriptor"}, None)
                shows = {p: int(per_person.get_group(p).value_counts().index[0]) for p in per_person.groups}
                sexed = [p for p in shows if p in read_as]
                alike = sum((bank_reads[shows[p]] or "?")[0] == read_as[p] for p in sexed)
                toned = [p for p in shows if p in tone_of]
                band = {p: "lmd".find((bank_reads[shows[p]] or "??")[1]) for p in toned}
                want = {p: "lmd".find(tone_of[p][0]) for p in toned}
                tone_alike = {t: f"{sum(band[p] == want[p] for p in toned if tone_of[p] == t)}/"
                                 f"{sum(tone_of[p] == t for p in toned)}" for t in ("light", "medium", "dark")}
                read = {p: [] for p in shows}
                for r in bank_faces.itertuples():
                    rgb = cv2.cvtColor(cv2.imread(str(src / r.key)), cv2.COLOR_BGR2RGB)
                    read[r.person].append(float(ager.read(rgb, [Face(r.x, r.y, r.w, r.h, 1.0, "bench")])[0]))
                groups = {p: AGE_MARKS[age_group(float(np.mean(a)))] for p, a in read.items()}
                age_alike = {g: f"{sum((bank_reads[shows[p]] or '?')[-1] == g for p in shows if groups[p] == g)}/"
                                f"{sum(groups[p] == g for p in shows)}" for g in sorted(set(groups.values()))}
                runs[name].update(people_labelled=len(people), same_vi_share=round(float(top / len(bank_faces)), 3),
                                  pairs_sharing_vi=f"{sharing}/{pairs}",
                                  virtual_identities=linking.get("virtual_identities"),
                                  reads_alike=f"{alike}/{len(sexed)}", tone_alike=tone_alike,
                                  tone_next_band=f"{sum(abs(band[p] - want[p]) == 1 for p in toned)}/{len(toned)}",
                                  age_alike={AGE_GROUP_NAMES[AGE_MARKS.index(g)]: v for g, v in age_alike.items()},
                                  people_read_as=linking.get("read_as"))
            print(name, json.dumps(runs[name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"people": args.people, "images_per_person": args.images, "runs": runs}, indent=2))
    print(f"overhead of keying: {runs['keyed']['wall_s'] / runs['plain']['wall_s']:.2f}x wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
