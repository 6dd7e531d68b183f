"""Identity linking on LFW: do one person's faces get one virtual identity, and different people different ones?

Conventions (anonymizer.identity.Linker under test):

* Identities: `anonymizer.eval.lfw.split_of`, never those the generator trained on. The threshold is
  picked on the `calibration` identities and the figures are reported on the `eval` identities. Each
  split holds every identity of that split: those with >= 3 acquired images are the *persons* scored for
  consistency; those with 1 or 2 images stay in as distractors (most people in a real dataset appear
  once or twice), so they count in precision and merge errors. All images per identity unless capped.
* Face: YuNet (score 0.6, scale 1) on the 250x250 original, the face nearest the centre (LFW centres the
  named person); the recognizer aligns on YuNet's 5 landmarks. Images with no face are left out, counted.
  Embeddings are computed once per split and kept in memory only.
* Orders: `name` is the sorted keys of LFW's layout (a person's images one after another, the easy case);
  `hashed` sorts by sha256 of the key, which interleaves people as an arbitrary dataset's sorted keys do.
* Passes: `one` takes each face's person id from `Linker.add`; `two` then assigns every face to the
  nearest final centroid (`Linker.assign`; a face beyond the threshold of every centroid keeps its id).
* Pairwise precision / recall: over all pairs of images, "same person" as linked vs as labelled.
* Same virtual identity: per person (>= 3 images), the share of its images on its most frequent virtual
  identity; `images` pools every person's images, `persons` averages per person.
* Merged pairs (the linker's own error): the share of pairs of different people (distractors included)
  that have images in one linked person. Shared virtual identity: the share of pairs of different people
  with an image each on the same virtual identity at `n_identities` (merges plus HMAC collisions, which
  alone happen at about 1/n_identities per pair); people sharing a VI: the share of people who share a
  virtual identity with anyone, which grows with the number of people (about people/n_identities), so it
  is also given for larger banks (`eval_collisions_by_bank_size`).
* Reference thresholds: the recognizer's pair distance at FAR 1e-3 and 1e-4 on the calibration split's
  impostor pairs (`anonymizer eval calibrate`'s rule).

Writes `linking.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from anonymizer.identity import Linker, virtual_identity

MIN_IMAGES = 3
ORDERS = ("name", "hashed")
PASSES = ("one", "two")
DEFAULT_THRESHOLDS = (0.95, 1.0, 1.05, 1.075, 1.1, 1.125, 1.15, 1.2)
DEFAULT_N_IDENTITIES = 1000
BANK_SIZES = (100, 1000, 10_000, 100_000, 1_000_000)
MAX_MERGED_PAIRS = 1e-3  # picking rule: the linker itself merges at most this share of pairs of people
PICK_ORDER, PICK_PASSES = "hashed", "two"
BENCH_KEY = hashlib.sha256(b"anonymizer eval linking: a fixed, public benchmark key").digest()


@dataclass
class Split:
    """Per acquired image: key and identity; the embeddings (memory only)."""
    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    emb: np.ndarray | None = None
    without_face: int = 0


def embed_split(lfw: Path, split: str, encoder, detector, images_per_identity: int | None, log=print) -> Split:
    from anonymizer.eval.calibrate import read_rgb, select
    from anonymizer.eval.reid import central_face

    out, vecs, t0 = Split(), [], time.perf_counter()
    items = select(lfw, split, images_per_identity or 10**9)
    for n, (identity, path) in enumerate(items):
        rgb = read_rgb(path)
        face = central_face(detector.detect(rgb), rgb.shape[:2])
        if face is None:
            out.without_face += 1
            continue
        vecs.append(encoder.embed(rgb, encoder.align(rgb, [face]))[0])
        out.keys.append(f"{identity}/{path.name}")
        out.ids.append(identity)
        if log and (n + 1) % 300 == 0:
            log(f"{split}: {n + 1}/{len(items)} images ({time.perf_counter() - t0:.0f} s)")
    out.emb = np.stack(vecs).astype(np.float32)
    return out


def order_of(keys: Sequence[str], order: str) -> np.ndarray:
    if order == "name":
        return np.argsort(np.asarray(keys), kind="stable")
    if order == "hashed":
        return np.asarray(sorted(range(len(keys)), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest()))
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def link(emb: np.ndarray, keys: Sequence[str], threshold: float, encoder: str, order: str, passes: str) -> list[str]:
    """Person ids per image (in the images' own order), the faces fed to the linker in `order`."""
    idx = order_of(keys, order)
    linker = Linker(threshold, encoder)
    first = linker.add(emb[idx])
    ids = first if passes == "one" else [b or a for a, b in zip(first, linker.assign(emb[idx]))]
    out = [""] * len(keys)
    for i, p in zip(idx, ids):
        out[i] = p
    return out


def _pairs(counts: np.ndarray) -> int:
    return int((counts * (counts - 1) // 2).sum())


def scores(truth: Sequence[str], pred: Sequence[str], key: bytes, n_identities: int) -> dict:
    truth_codes = np.unique(np.asarray(truth), return_inverse=True)[1]
    pred_codes = np.unique(np.asarray(pred), return_inverse=True)[1]
    joint = np.unique(truth_codes * (pred_codes.max() + 1) + pred_codes, return_counts=True)[1]
    both = _pairs(joint)
    linked, same = _pairs(np.bincount(pred_codes)), _pairs(np.bincount(truth_codes))
    vi = np.array([virtual_identity(key, p, n_identities) for p in pred])
    people = int(truth_codes.max()) + 1

    def shared_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
        """Pairs of different people with an image each under one label."""
        members: dict[int, set[int]] = {}
        for t, lab in zip(truth_codes, labels):
            members.setdefault(int(lab), set()).add(int(t))
        return {(a, b) for m in members.values() for a in m for b in m if a < b}

    scored = np.flatnonzero(np.bincount(truth_codes) >= MIN_IMAGES)
    majority, sizes, whole = [], [], 0
    for t in scored:
        v = vi[truth_codes == t]
        top = int(np.unique(v, return_counts=True)[1].max())
        majority.append(top / len(v))
        sizes.append(len(v))
        whole += top == len(v)
    person_pairs = people * (people - 1) // 2
    vi_pairs = shared_pairs(vi)
    return {
        "pair_precision": both / linked if linked else 1.0,
        "pair_recall": both / same if same else 1.0,
        "same_vi_images": float(np.dot(majority, sizes) / sum(sizes)),
        "same_vi_persons": float(np.mean(majority)),
        "persons_whole": whole / len(scored),
        "merged_pairs": len(shared_pairs(pred_codes)) / person_pairs,
        "shared_vi_pairs": len(vi_pairs) / person_pairs,
        "people_sharing_vi": len({p for pair in vi_pairs for p in pair}) / people,
        "linked_persons": int(pred_codes.max()) + 1,
        "people": people,
        "scored_persons": len(scored),
    }


def _scored(ids: Sequence[str]) -> dict:
    n = np.unique(np.asarray(ids), return_counts=True)[1]
    return {"scored_persons": int((n >= MIN_IMAGES).sum()), "scored_images": int(n[n >= MIN_IMAGES].sum())}


def reference_thresholds(emb: np.ndarray, ids: Sequence[str]) -> dict[str, float]:
    from anonymizer.eval.calibrate import Pairs
    from anonymizer.eval.reid import threshold_at_far

    p = Pairs.of(emb, ids)
    return {f"{far:g}": round(threshold_at_far(p.impostor, far), 4) for far in (1e-3, 1e-4)}


def pick(sweep: list[dict]) -> dict:
    """The threshold with the highest same-virtual-identity share among those that merge at most
    MAX_MERGED_PAIRS of pairs of people (hashed order, two passes); else the fewest merges."""
    rows = [r for r in sweep if r["order"] == PICK_ORDER and r["passes"] == PICK_PASSES]
    ok = [r for r in rows if r["merged_pairs"] <= MAX_MERGED_PAIRS]
    if ok:
        best = max(ok, key=lambda r: (r["same_vi_images"], -r["threshold"]))
    else:
        best = min(rows, key=lambda r: r["merged_pairs"])
    return {"threshold": best["threshold"],
            "rule": f"max same-VI share (images) with merged pairs <= {MAX_MERGED_PAIRS:g}, on calibration identities, "
                    f"{PICK_ORDER} order, {PICK_PASSES} pass(es)"}


def run_linking(lfw: Path, encoder: str = "mobilefacenet", thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                n_identities: int = DEFAULT_N_IDENTITIES, images_per_identity: int | None = None,
                model_dir: str | None = None, log=print) -> dict:
    from anonymizer.detect import build_detector
    from anonymizer.eval.lfw import SPLIT_RULE
    from anonymizer.measure.encoder import build_encoder

    t0 = time.perf_counter()
    detector = build_detector("yunet", {"score_threshold": 0.6, "scales": [1.0]}, model_dir)
    enc = build_encoder(encoder, {}, model_dir)
    data = {s: embed_split(lfw, s, enc, detector, images_per_identity, log) for s in ("calibration", "eval")}
    t_embed = time.perf_counter() - t0

    def sweep(d: Split, ts: Sequence[float], orders=ORDERS, passes=PASSES) -> list[dict]:
        rows = []
        for t in ts:
            for o in orders:
                for p in passes:
                    r = scores(d.ids, link(d.emb, d.keys, t, encoder, o, p), BENCH_KEY, n_identities)
                    rows.append({"threshold": float(t), "order": o, "passes": p,
                                 **{k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in r.items()}})
        return rows

    cal_sweep = sweep(data["calibration"], thresholds)
    chosen = pick(cal_sweep)
    eval_sweep = sweep(data["eval"], thresholds)
    ev = data["eval"]
    return {
        "protocol": {"split_rule": SPLIT_RULE, "encoder": encoder, "min_images_scored": MIN_IMAGES,
                     "images_per_identity": images_per_identity, "n_identities": n_identities,
                     "detector": "yunet (score 0.6, scale 1), face nearest the centre, aligned on its landmarks",
                     "expected_hmac_collision_per_pair": 1 / n_identities, "key": "fixed public benchmark key"},
        "data": {s: {"images": len(d.ids), "identities": len(set(d.ids)), "without_face": d.without_face,
                     **_scored(d.ids)} for s, d in data.items()},
        "reference_thresholds": {s: reference_thresholds(d.emb, d.ids) for s, d in data.items()},
        "chosen": chosen,
        "calibration_sweep": cal_sweep,
        "eval_sweep": eval_sweep,
        "eval_at_chosen": [r for r in eval_sweep if r["threshold"] == chosen["threshold"]],
        "eval_collisions_by_bank_size": _by_bank_size(ev, chosen["threshold"], encoder),
        "eval_faces_per_s_linking": _linking_speed(ev, chosen["threshold"], encoder),
        "seconds": {"embedding": round(t_embed, 1), "total": round(time.perf_counter() - t0, 1)},
    }


def _by_bank_size(d: Split, threshold: float, encoder: str) -> list[dict]:
    """Shared virtual identities at the chosen threshold as the bank grows: merges stay, HMAC collisions fall."""
    pred = link(d.emb, d.keys, threshold, encoder, PICK_ORDER, PICK_PASSES)
    out = []
    for n in BANK_SIZES:
        r = scores(d.ids, pred, BENCH_KEY, n)
        out.append({"n_identities": n, "shared_vi_pairs": float(f"{r['shared_vi_pairs']:.4g}"),
                    "people_sharing_vi": float(f"{r['people_sharing_vi']:.4g}"),
                    "same_vi_images": float(f"{r['same_vi_images']:.4g}")})
    return out


def _linking_speed(d: Split, threshold: float, encoder: str) -> float:
    t = time.perf_counter()
    Linker(threshold, encoder).add(d.emb)
    return round(len(d.emb) / (time.perf_counter() - t), 1)


COLUMNS = (("threshold", "threshold"), ("order", "order"), ("passes", "passes"),
           ("pair_precision", "pair precision"), ("pair_recall", "pair recall"),
           ("same_vi_images", "same VI (images)"), ("same_vi_persons", "same VI (per person)"),
           ("merged_pairs", "merged pairs of people"), ("shared_vi_pairs", "pairs of people sharing a VI"),
           ("people_sharing_vi", "people sharing a VI"),
           ("linked_persons", "linked persons / people"))


def markdown_table(rows: list[dict], chosen: float | None = None) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for k, _ in COLUMNS:
            v = r[k]
            if k == "linked_persons":
                cells.append(f"{v} / {r['people']}")
            elif k == "threshold":
                cells.append(f"**{v:g}**" if chosen is not None and v == chosen else f"{v:g}")
            elif k in ("merged_pairs", "shared_vi_pairs"):
                cells.append(f"{v:.2e}")
            else:
                cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The sweep on both splits (the picking order and passes), then every order and pass at the pick."""
    chosen = result["chosen"]["threshold"]

    def picked(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r["order"] == PICK_ORDER and r["passes"] == PICK_PASSES]

    by_bank = [f"| {r['n_identities']:,} | {r['shared_vi_pairs']:.2e} | {r['people_sharing_vi']:.3f} | "
               f"{r['same_vi_images']:.3f} |" for r in result["eval_collisions_by_bank_size"]]
    return "\n".join([
        f"calibration identities ({PICK_ORDER} order, {PICK_PASSES} pass(es)); "
        f"threshold picked: {result['chosen']['rule']}",
        markdown_table(picked(result["calibration_sweep"]), chosen), "",
        f"evaluation identities ({PICK_ORDER} order, {PICK_PASSES} pass(es))",
        markdown_table(picked(result["eval_sweep"]), chosen), "",
        f"evaluation identities at {chosen:g}, every order and pass",
        markdown_table(result["eval_at_chosen"], chosen), "",
        f"evaluation identities at {chosen:g}, {PICK_ORDER} order, {PICK_PASSES} pass(es), by bank size",
        "| bank identities | pairs of people sharing a VI | people sharing a VI | same VI (images) |",
        "|---|---|---|---|", *by_bank])


# --- command line -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from anonymizer.models import search_dirs

    default_lfw = next((d.parent / "data" / "lfw" for d in search_dirs() if (d.parent / "data" / "lfw").is_dir()), None)
    p.add_argument("--lfw", type=Path, default=default_lfw, help="LFW folder holding images/ and identities.tsv")
    p.add_argument("--model-dir", help="model directory (default: $ANONYMIZER_MODEL_DIR and the usual places)")
    p.add_argument("--out", type=Path, default=Path("out/eval/linking"), help="folder for linking.json")
    p.add_argument("--encoder", default="mobilefacenet", help="face recognizer (anonymizer.measure.encoder.ENCODERS)")
    p.add_argument("--thresholds", type=lambda t: [float(x) for x in t.split(",") if x.strip()],
                   default=list(DEFAULT_THRESHOLDS), help="linking distances to sweep, comma-separated")
    p.add_argument("--n-identities", type=int, default=DEFAULT_N_IDENTITIES,
                   help="virtual identities in the face bank (HMAC collisions happen at about 1/n per pair)")
    p.add_argument("--images-per-identity", type=int, default=None, help="first N images per identity (default: all)")


def run(args: argparse.Namespace) -> int:
    if args.lfw is None or not Path(args.lfw).is_dir():
        raise FileNotFoundError(f"LFW folder not found: {args.lfw} (pass --lfw)")
    result = run_linking(Path(args.lfw), args.encoder, args.thresholds, args.n_identities, args.images_per_identity,
                         args.model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "linking.json"
    path.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(json.dumps({"json": str(path), "chosen_threshold": result["chosen"]["threshold"], "data": result["data"],
                      "reference_thresholds": result["reference_thresholds"], "seconds": result["seconds"],
                      "faces_per_s_linking": result["eval_faces_per_s_linking"]}))
    return 0
