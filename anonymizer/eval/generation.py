"""Generated faces against classical operators: identity removed, pose kept, still a face, background kept.

Conventions (fixed so runs stay comparable):

* Data: held-out LFW identities (the generator's training split leaves them out: `anonymizer.eval.lfw.split_of`),
  the first `images_per_identity` images of each, at most `limit`; the face nearest the centre, found by
  YuNet at scale 1. Optionally the photos folder: every face the policy's detectors find, scored when
  its shorter side is at least the policy's `min_reid_face_px`.
* Operators: the policy's region settings; the per-face RNG `face_rngs(seed, key, n)`; a JPEG round trip at
  the policy's quality (what a release holds). `generated` takes the policy's (or `--weights`) generator.
* Re-identification (naive): dlib distance between the original face and the same face after
  anonymization, aligned on the original (the attacker's best crop); the rate under 0.6 (dlib's own
  threshold) and under the policy's calibrated `same_person_distance`.
* Re-identification, re-aligned: the same network, aligned by dlib's 68-point predictor found on each image
  itself (the attacker aligns what it sees). The identity guard selects draws by the first measure; this
  one checks that they are not just past the line for that one crop.
* Pose: `measure.pose.PoseMeter` (YuNet's landmarks re-found in a window around the face, solvePnP) on the
  original and the anonymized image; median and p95 of |Δyaw|, |Δpitch|, |Δroll| over faces found again.
* Detectability: the share of anonymized faces found again (IoU >= 0.3 with the original box) by YuNet and
  by dlib HOG, each in a window around the face scaled so the face is ~112 px (dlib HOG needs ~80 px).
* Diversity: dlib distance between the outputs of two seeds for the same face (a new identity per seed
  means a distance above 0.6; blur gives 0: it is a function of the face).
* Colour: CIE76 ΔE between the mean Lab colour of the face box's central half before and after (median
  over faces). A grey or wrongly exposed face in a colour photo is what first gives a generated face away;
  a classical operator that keeps the face's average (blur) scores low here too, so it is a check, not
  a measure of realism.
* Background: the share of images whose pixels outside the operator's masks are byte-identical before the
  JPEG round trip.
* Speed: faces/s of each operator's `anonymize` call (CPU, or the GPU torch finds), and images/s on the
  photos.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from anonymizer.anonymize import face_rngs
from anonymizer.regions import union_mask
from anonymizer.detect import build_detector
from anonymizer.eval.reid import _jpeg, _read_rgb, central_face
from anonymizer.faces import Face
from anonymizer.measure.pose import PoseMeter, find_again
from anonymizer.policy import Policy, load_policy

DEFAULT_OPERATORS: tuple[tuple[str, float], ...] = (
    ("generated", 1.0), ("blur", 0.15), ("blur", 0.35), ("pixelate", 0.2), ("noise", 0.8), ("mask", 1.0))
SAME_PERSON = 0.6  # dlib's published threshold: the definition of a naive re-identification


@dataclass
class Sample:
    key: str
    rgb: np.ndarray
    faces: list[Face]    # the faces to anonymize
    scored: list[int]    # indices of the faces that are measured


def lfw_samples(lfw_images: Path, policy: Policy, limit: int, images_per_identity: int = 2) -> list[Sample]:
    from anonymizer.eval.lfw import list_images

    detector = build_detector("yunet", {"scales": [1.0]}, policy.model_dir)
    per_id: dict[str, int] = {}
    out: list[Sample] = []
    for identity, path in list_images(lfw_images, "eval"):
        if per_id.get(identity, 0) >= images_per_identity:
            continue
        rgb = _read_rgb(path)
        face = central_face(detector.detect(rgb), rgb.shape[:2])
        if face is None:
            continue
        per_id[identity] = per_id.get(identity, 0) + 1
        out.append(Sample(f"lfw/{path.parent.name}/{path.name}", rgb, [face], [0]))
        if len(out) >= limit:
            break
    return out


def photo_samples(photos: Path, policy: Policy) -> list[Sample]:
    from anonymizer.detect import build_ensemble

    detector = build_ensemble(policy.detection, policy.model_dir)
    out = []
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}):
        rgb = _read_rgb(path)
        faces = detector.detect(rgb)
        scored = [i for i, f in enumerate(faces) if f.size >= policy.measurement.min_reid_face_px]
        out.append(Sample(f"photos/{path.name}", rgb, faces, scored))
    return out


def colour_shift(before: np.ndarray, after: np.ndarray, face: Face) -> float:
    h, w = before.shape[:2]
    x0, y0 = int(max(0, face.x + face.w / 4)), int(max(0, face.y + face.h / 4))
    x1, y1 = int(min(w, face.x + 3 * face.w / 4)) + 1, int(min(h, face.y + 3 * face.h / 4)) + 1
    lab = [cv2.cvtColor(img[y0:y1, x0:x1].astype(np.float32) / 255, cv2.COLOR_RGB2Lab) for img in (before, after)]
    return float(np.linalg.norm(lab[0].reshape(-1, 3).mean(0) - lab[1].reshape(-1, 3).mean(0)))


def _stats(values: Sequence[float]) -> dict:
    v = np.abs(np.asarray([x for x in values if x is not None], np.float64))
    if not v.size:
        return {"n": 0, "median": None, "p95": None}
    return {"n": int(v.size), "median": round(float(np.median(v)), 2), "p95": round(float(np.percentile(v, 95)), 2)}


class Evaluator:
    def __init__(self, policy: Policy, weights: str | None = None) -> None:
        from anonymizer.measure.encoder import build_encoder

        self.policy = policy
        self.encoder = build_encoder(policy.measurement.encoder.name, policy.measurement.encoder.params, policy.model_dir)
        self.realigned = build_encoder("dlib_resnet", {"landmarks": 68}, policy.model_dir)
        self.yunet = build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}, policy.model_dir)
        self.hog = build_detector("dlib_hog", {"upsample": 0}, policy.model_dir)
        self.pose = PoseMeter(self.yunet)
        self.weights = weights

    def operator(self, name: str, strength: float):
        from anonymizer.components import build_operator

        weights = {"weights": self.weights} if name == "generated" and self.weights else {}
        return build_operator(self.policy, name, strength, **weights)

    def run_operator(self, op, samples: Sequence[Sample], progress=None) -> tuple[dict, list[dict]]:
        q = self.policy.output.jpeg_quality
        rows: list[dict] = []
        seconds, faces_done, bg_identical = 0.0, 0, 0
        for s in samples:
            t = time.perf_counter()
            res = op.anonymize(s.rgb, s.faces, face_rngs(self.policy.seed, s.key, len(s.faces)))
            seconds += time.perf_counter() - t
            faces_done += len(s.faces)
            other = op.anonymize(s.rgb, s.faces, face_rngs(self.policy.seed + 1, s.key, len(s.faces)))
            mask = union_mask(res.masks, s.rgb.shape[:2])
            bg_identical += bool(np.array_equal(res.image[mask == 0], s.rgb[mask == 0]))
            out, out2 = _jpeg(res.image, q), _jpeg(other.image, q)
            scored = [s.faces[i] for i in s.scored]
            if not scored:
                continue
            al = self.encoder.align(s.rgb, scored)
            e0, e1, e2 = (self.encoder.embed(img, al) for img in (s.rgb, out, out2))
            r0, r1 = (self.realigned.embed(img, self.realigned.align(img, scored)) for img in (s.rgb, out))
            changes = self.pose.measure(s.rgb, out, scored, 0)
            for j, (i, f) in enumerate(zip(s.scored, scored)):
                ch = changes[j]
                b, a = ch.before, ch.after
                rows.append({
                    "key": s.key, "face": i, "size": round(f.size, 1),
                    "method": res.methods[i] if res.methods else op.name,
                    "reid_distance": float(np.linalg.norm(e0[j] - e1[j])),
                    "reid_distance_realigned": float(np.linalg.norm(r0[j] - r1[j])),
                    "seed_distance": float(np.linalg.norm(e1[j] - e2[j])),
                    "colour_delta_e": round(colour_shift(s.rgb, out, f), 2),
                    "yunet_detects": a is not None,
                    "dlib_detects": find_again(self.hog, out, f) is not None,
                    "d_yaw": None if a is None or b is None else a.yaw - b.yaw,
                    "d_pitch": None if a is None or b is None else a.pitch - b.pitch,
                    "d_roll": None if a is None or b is None else a.roll - b.roll,
                })
            if progress:
                progress.update(1)
        return {"seconds": seconds, "faces": faces_done, "images": len(samples),
                "background_identical": bg_identical / max(1, len(samples))}, rows

    def summarise(self, rows: list[dict], timing: dict) -> dict:
        n = len(rows)
        calibrated = self.policy.thresholds.same_person_distance
        methods: dict[str, int] = {}
        for r in rows:
            methods[r["method"]] = methods.get(r["method"], 0) + 1
        frac = (lambda pred: round(sum(1 for r in rows if pred(r)) / n, 4)) if n else (lambda pred: None)
        return {
            "faces_scored": n,
            "reid_rate": frac(lambda r: r["reid_distance"] < SAME_PERSON),
            "reid_rate_calibrated": frac(lambda r: r["reid_distance"] < calibrated),
            "reid_rate_realigned": frac(lambda r: r["reid_distance_realigned"] < SAME_PERSON),
            "reid_distance_median": round(float(np.median([r["reid_distance"] for r in rows])), 3) if n else None,
            "yaw": _stats([r["d_yaw"] for r in rows]), "pitch": _stats([r["d_pitch"] for r in rows]),
            "roll": _stats([r["d_roll"] for r in rows]),
            "detectable_yunet": frac(lambda r: r["yunet_detects"]),
            "detectable_dlib": frac(lambda r: r["dlib_detects"]),
            "diversity_median": round(float(np.median([r["seed_distance"] for r in rows])), 3) if n else None,
            "diversity_new_identity": frac(lambda r: r["seed_distance"] >= SAME_PERSON),
            "colour_delta_e_median": round(float(np.median([r["colour_delta_e"] for r in rows])), 2) if n else None,
            "background_identical": round(timing["background_identical"], 4),
            "faces_per_s": round(timing["faces"] / timing["seconds"], 1) if timing["seconds"] else None,
            "images_per_s": round(timing["images"] / timing["seconds"], 2) if timing["seconds"] else None,
            "methods": methods,
        }


def sample_grid(ev: Evaluator, samples: Sequence[Sample], operators: Sequence[tuple[str, float]], path: Path,
                n: int = 8, cell: int = 128) -> None:
    """Anonymized faces only (never the originals): rows are faces, columns three seeds of the generator and
    the classical operators; the original's landmarks are drawn small, so pose can be compared by eye."""
    cols = []
    for name, strength in operators:
        op = ev.operator(name, strength)
        seeds = (0, 1, 2) if name == "generated" else (0,)
        cols += [(f"{name} seed {k}" if name == "generated" else f"{name} {strength:g}", op, k) for k in seeds]
    rows = []
    for s in samples[:n]:
        f = s.faces[s.scored[0]]
        side = max(f.w, f.h) * 1.8
        cx, cy = f.x + f.w / 2, f.y + f.h / 2
        m = np.array([[cell / side, 0, cell / 2 - cx * cell / side], [0, cell / side, cell / 2 - cy * cell / side]])
        tiles = []
        for _, op, k in cols:
            res = op.anonymize(s.rgb, s.faces, face_rngs(ev.policy.seed + k, s.key, len(s.faces)))
            tile = cv2.warpAffine(res.image, m, (cell, cell), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
            if f.landmarks is not None:
                for x, y in np.asarray(f.landmarks) @ m[:, :2].T + m[:, 2]:
                    cv2.circle(tile, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    header = np.full((18, cell * len(cols), 3), 255, np.uint8)
    for j, (label, _, _) in enumerate(cols):
        cv2.putText(header, label, (j * cell + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header] + rows, 0)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def evaluate(policy: Policy, lfw_images: Path | None, photos: Path | None, out: Path, limit: int = 300,
             operators: Sequence[tuple[str, float]] = DEFAULT_OPERATORS, weights: str | None = None,
             log=print) -> dict:
    from tqdm import tqdm

    ev = Evaluator(policy, weights)
    sets: dict[str, list[Sample]] = {}
    if lfw_images:
        sets["lfw_heldout"] = lfw_samples(lfw_images, policy, limit)
    if photos:
        sets["photos"] = photo_samples(photos, policy)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"policy": policy.name, "weights": None, "operators": {}, "sets": {k: len(v) for k, v in sets.items()}}
    per_face: dict = {}
    for name, strength in operators:
        op = ev.operator(name, strength)
        label = "generated" if name == "generated" else f"{name} {strength:g}"
        if name == "generated":
            result["weights"] = {"file": str(op.weights_path), "sha256": op.card.get("weights_sha256"),
                                 "steps": op.card.get("steps"), "network": op.card.get("network"), "device": op.device}
        for set_name, samples in sets.items():
            with tqdm(total=len(samples), desc=f"{label} on {set_name}", unit="img", disable=None) as bar:
                timing, rows = ev.run_operator(op, samples, bar)
            summary = ev.summarise(rows, timing)
            result["operators"].setdefault(label, {})[set_name] = summary
            per_face[f"{label}|{set_name}"] = rows
            log(json.dumps({"event": "eval_generation", "operator": label, "set": set_name,
                            **{k: v for k, v in summary.items() if k != "methods"}}))
    if "lfw_heldout" in sets:
        sample_grid(ev, sets["lfw_heldout"], operators, out / "generation_grid.png")
    if "photos" in sets:  # in colour, several faces per image: what the harmonisation is for
        sample_grid(ev, [s for s in sets["photos"] if s.scored], operators, out / "generation_grid_photos.png")
    (out / "generation.json").write_text(json.dumps(result, indent=2))
    (out / "generation_faces.json").write_text(json.dumps(per_face))
    (out / "generation.md").write_text(markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    lines = ["| operator | set | faces | reid < 0.6 | reid < calibrated | reid < 0.6 re-aligned | median \\|Δyaw\\| | p95 \\|Δyaw\\| | "
             "p95 \\|Δpitch\\| | p95 \\|Δroll\\| | YuNet detects | dlib detects | new identity per seed | "
             "colour ΔE | background identical | faces/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, by_set in result["operators"].items():
        for set_name, s in by_set.items():
            lines.append(
                f"| {label} | {set_name} | {s['faces_scored']} | {s['reid_rate']} | {s['reid_rate_calibrated']} | "
                f"{s['reid_rate_realigned']} | "
                f"{s['yaw']['median']} | {s['yaw']['p95']} | {s['pitch']['p95']} | {s['roll']['p95']} | "
                f"{s['detectable_yunet']} | {s['detectable_dlib']} | {s['diversity_new_identity']} | "
                f"{s['colour_delta_e_median']} | {s['background_identical']} | {s['faces_per_s']} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from anonymizer.models import search_dirs

    shared = next((d.parent / "data" for d in search_dirs() if (d.parent / "data" / "lfw").is_dir()), None)
    p.add_argument("--lfw", type=Path, default=shared / "lfw" / "images" if shared else None,
                   help="LFW images/ folder (the held-out identities are used)")
    p.add_argument("--photos", type=Path, default=shared / "photos" if shared else None,
                   help="a folder of photos to run as well ('none' to skip)")
    p.add_argument("--policy", help="policy YAML: detection, region, seed, encoder, the generator's parameters "
                   "(default: the embedded generated profile, the one that runs the generator)")
    p.add_argument("--weights", help="generator weights name or .pt path (default: the policy's, else 'generator')")
    p.add_argument("--limit", type=int, default=300, help="held-out LFW faces to evaluate")
    p.add_argument("--operators", default=None,
                   help="e.g. 'generated;blur:0.15,0.35;noise:0.8' (default: generated, blur 0.15/0.35, "
                        "pixelate 0.2, noise 0.8, mask)")
    p.add_argument("--out", type=Path, default=Path("out/eval/generation"), help="folder for generation.json, "
                   "generation.md and the sample grids (not to be committed: LFW's and the photos' licences)")


def _parse_operators(text: str | None) -> list[tuple[str, float]]:
    if not text:
        return list(DEFAULT_OPERATORS)
    ops = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, strengths = part.partition(":")
        ops += [(name.strip(), float(s)) for s in strengths.split(",")] if strengths else [(name.strip(), 1.0)]
    return ops


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy, profile="generated")
    photos = None if str(args.photos).lower() == "none" else args.photos
    for label, folder in (("LFW images", args.lfw), ("photos", photos)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
    result = evaluate(policy, args.lfw, photos, args.out, args.limit, _parse_operators(args.operators), args.weights)
    print(markdown_table(result))
    print(f"wrote generation.json, generation.md and the sample grids to {args.out}")
    return 0
