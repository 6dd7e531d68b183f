"""Cheap detector experiments on the WIDER FACE val subset: run the networks once, sweep fusion in Python.

`cache` runs every detector ONCE per image at a low score threshold and stores the raw detections, kept
apart per detector and per scale (YuNet's cross-scale NMS and RetinaFace's are undone by running each
scale on its own), with the milliseconds each took, in bench/results/detection_cache.json (git-ignored).
CenterFace (our anonymizer/detect/centerface.py, the peer's network) is cached per scale at its own lower
threshold (its heatmap scores run lower); `cache --add centerface` adds it to an existing cache without
re-running the others. The peer itself (deface/CenterFace, in its own virtualenv, see
bench/detection_peer.py) is cached the same way, as deface runs it (1x, threshold 0.2).

`sweep` rebuilds any configuration from the cache (a subset of scales, a score threshold per detector,
NMS or weighted box fusion with per-detector weights, a fused-score threshold) and scores it with the
harness's own scoring, including recall at matched false-positive rates (2, 4 and 7 FP/img: each
configuration cut on its own score ranking; for WBF that cut is the min_score to deploy). Rebuilt
configurations reproduce the harness's numbers (YuNet 0.6 at scales 1,2,3: 0.557 at 3.99 FP/img both
ways); the one difference is that RetinaFace's cross-scale NMS runs here on per-scale NMS-ed boxes.

    python bench/detection_sweep.py cache  [--limit N] [--skip-peer] [--add centerface]
    python bench/detection_sweep.py sweep  [--top 15] [--families base,centerface,refine]
    python bench/detection_sweep.py time default policies/default.yaml [--rounds 2]   (ms/image on the photos)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from anonymizer.eval import detection as ev  # noqa: E402
from anonymizer.faces import Face, nms, valid, weighted_box_fusion  # noqa: E402

SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO / ".." / "shared"))
CACHE = REPO / "bench" / "results" / "detection_cache.json"
YUNET_SCALES = (1.0, 2.0, 3.0, 4.0)
RETINA_SCALES = (1.0, 2.0)
CENTERFACE_SCALES = (0.5, 1.0, 1.5, 2.0)  # 3x: 4.4 s per 1024 px photo on one thread
RAW_THRESHOLD = 0.3
CENTERFACE_RAW_THRESHOLD = 0.1  # CenterFace's heatmap scores run lower (deface's default cut is 0.2)
PEER_THRESHOLD = 0.2
RECALL_FIRST_RATES = (4.0, 7.0)  # the current default's FP/img (3.99), and about deface@0.2's (6.34)
RETINA_TILING = {"max_side": 4096, "tile": 1024, "tile_overlap": 128}


# --- the cache --------------------------------------------------------------------------------------


def _rows(faces: list[Face]) -> list[list[float]]:
    return [[round(f.x, 2), round(f.y, 2), round(f.w, 2), round(f.h, 2), round(f.score, 4)] for f in faces]


def _centerface_entries(samples: list[ev.Sample], images: list[dict], model_dir: str) -> dict:
    """Adds CenterFace's raw detections (each scale on its own, ms each) to the cache entries."""
    from anonymizer.detect import build_detector

    det = build_detector("centerface", {"score_threshold": CENTERFACE_RAW_THRESHOLD, "scales": list(CENTERFACE_SCALES),
                                        "max_side": 4096}, model_dir)
    t_start = time.time()
    for i, (s, entry) in enumerate(zip(samples, images)):
        image = ev.load_restored(s)
        wh = (image.shape[1], image.shape[0])
        for scale in det.usable_scales(image.shape):
            t0 = time.perf_counter()
            faces = det._detect_at(image, scale)
            entry["ms"][f"centerface@{scale:g}"] = (time.perf_counter() - t0) * 1000
            entry["dets"][f"centerface@{scale:g}"] = _rows(ev.to_eval_frame(faces, wh))
        print(f"centerface {i + 1}/{len(samples)} {s.name} {time.time() - t_start:.0f}s", flush=True)
    return {"centerface_scales": CENTERFACE_SCALES, "centerface_raw_threshold": CENTERFACE_RAW_THRESHOLD}


def add_to_cache(detector: str, model_dir: str, path: Path, threads: int) -> None:
    """Runs one more detector over the cached images and stores it beside the others (same file)."""
    import cv2

    if detector != "centerface":
        raise SystemExit(f"--add supports centerface, not {detector!r} (rebuild the cache for the others)")
    cv2.setNumThreads(threads)
    samples, images, settings = load_cache(path)
    settings.update(_centerface_entries(samples, images, model_dir))
    path.write_text(json.dumps({"settings": settings, "images": images}))
    print(f"wrote {path}")


def build_cache(data: Path, model_dir: str, out: Path, limit: int | None, skip_peer: bool, venv: Path, threads: int) -> None:
    import cv2
    import torch

    from anonymizer.detect import build_detector

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    samples = ev.select_samples(ev.load_ground_truth(data), limit)
    yunet = build_detector("yunet", {"score_threshold": RAW_THRESHOLD, "scales": list(YUNET_SCALES), "max_side": 4096}, model_dir)
    retina = {s: build_detector("retinaface", {"score_threshold": RAW_THRESHOLD, "scales": [s], **RETINA_TILING}, model_dir)
              for s in RETINA_SCALES}
    images = []
    t_start = time.time()
    for i, s in enumerate(samples):
        image = ev.load_restored(s)
        wh = (image.shape[1], image.shape[0])
        entry = {"name": s.name, "restored_wh": list(wh), "dets": {}, "ms": {}}
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        for scale in yunet.usable_scales(bgr.shape):
            t0 = time.perf_counter()
            faces = yunet._detect_at(bgr, scale)
            entry["ms"][f"yunet@{scale:g}"] = (time.perf_counter() - t0) * 1000
            entry["dets"][f"yunet@{scale:g}"] = _rows(ev.to_eval_frame(faces, wh))
        for scale, det in retina.items():
            t0 = time.perf_counter()
            faces = det.detect(image)
            entry["ms"][f"retinaface@{scale:g}"] = (time.perf_counter() - t0) * 1000
            entry["dets"][f"retinaface@{scale:g}"] = _rows(ev.to_eval_frame(faces, wh))
        images.append(entry)
        print(f"{i + 1}/{len(samples)} {s.name} {time.time() - t_start:.0f}s", flush=True)
    settings = {"data": str(data), "raw_threshold": RAW_THRESHOLD, "yunet_scales": YUNET_SCALES,
                "retinaface_scales": RETINA_SCALES, "retinaface": RETINA_TILING, "threads": threads}
    settings.update(_centerface_entries(samples, images, model_dir))
    if not skip_peer:
        import detection_peer as peer

        python = peer.ensure_peer_venv(venv)
        with tempfile.TemporaryDirectory(prefix="detection_sweep_") as tmp:
            jobs = peer.write_restored(samples, Path(tmp), None)
            detections, ms, backend = peer.run_peer(python, jobs, PEER_THRESHOLD, Path(tmp))
        for entry, dets, m in zip(images, detections, ms):
            entry["dets"][f"deface@{PEER_THRESHOLD:g}"] = _rows(dets)
            entry["ms"][f"deface@{PEER_THRESHOLD:g}"] = m
        settings.update(peer_threshold=PEER_THRESHOLD, peer_backend=backend)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "images": images}))
    print(f"wrote {out}")


def load_cache(path: Path = CACHE) -> tuple[list[ev.Sample], list[dict], dict]:
    payload = json.loads(path.read_text())
    images = payload["images"]
    by_name = {s.name: s for s in ev.load_ground_truth(payload["settings"]["data"])}
    return [by_name[e["name"]] for e in images], images, payload["settings"]


def cached_faces(entry: dict, source: str, min_score: float = 0.0) -> list[Face]:
    detector = source.split("@")[0]
    return [Face(x, y, w, h, s, detector) for x, y, w, h, s in entry["dets"].get(source, []) if s >= min_score]


# --- configurations rebuilt from the cache ----------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One detector of a configuration: its cached per-scale sources, score threshold and fusion weight."""

    detector: str  # yunet | retinaface | centerface | deface
    scales: tuple[float, ...]
    threshold: float
    weight: float = 1.0
    inner_nms: float | None = None  # the detector's own cross-scale NMS (YuNet 0.3, RetinaFace 0.4, CenterFace 0.3)

    def sources(self) -> list[str]:
        return [f"{self.detector}@{s:g}" for s in self.scales]

    def label(self) -> str:
        sc = ",".join(f"{s:g}" for s in self.scales)
        w = f" w{self.weight:g}" if self.weight != 1.0 else ""
        return f"{self.detector}[{sc}]@{self.threshold:g}{w}"


@dataclass(frozen=True)
class Config:
    parts: tuple[Part, ...]
    merge: str = "nms"  # nms | wbf
    merge_iou: float = 0.3
    min_score: float = 0.0  # WBF: fused-score threshold
    per_scale: bool = False  # WBF: every scale votes as its own model (else each detector NMSes its scales first)

    def label(self) -> str:
        parts = " + ".join(p.label() for p in self.parts)
        if self.merge == "wbf":
            how = f"WBF{'/scale' if self.per_scale else ''} iou{self.merge_iou:g} fused>={self.min_score:g}"
        else:
            how = f"NMS iou{self.merge_iou:g}"
        return f"{parts} | {how}"


INNER_NMS = {"yunet": 0.3, "retinaface": 0.4, "centerface": 0.3}


def part_faces(entry: dict, part: Part, wh: tuple[int, int]) -> list[list[Face]]:
    """The part's faces per scale (thresholded), as the detector would pass them to its own NMS."""
    return [[f for f in cached_faces(entry, src, part.threshold) if valid(f, *wh)]
            for src in part.sources() if src in entry["dets"]]  # a scale skipped for max_side does not vote


def run_config(cfg: Config, images: list[dict]) -> list[list[Face]]:
    out = []
    for entry in images:
        wh = (ev.EVAL_SIDE, ev.EVAL_SIDE)
        models: list[list[Face]] = []
        weights: list[float] = []
        for part in cfg.parts:
            per_scale = part_faces(entry, part, wh)
            inner = part.inner_nms if part.inner_nms is not None else INNER_NMS.get(part.detector, 0.4)
            if cfg.merge == "wbf" and cfg.per_scale:
                models += per_scale
                weights += [part.weight] * len(per_scale)
            else:
                flat = [f for fs in per_scale for f in fs]
                models.append(nms(flat, inner) if len(per_scale) > 1 else flat)
                weights.append(part.weight)
        if cfg.merge == "wbf":
            fused = weighted_box_fusion(models, weights, cfg.merge_iou)
            out.append([f for f in fused if f.score >= cfg.min_score])
        else:
            flat = [f for fs in models for f in fs]
            out.append(nms(flat, cfg.merge_iou) if len(models) > 1 else flat)
    return out


def summarize(samples, detections, ms: float | None = None) -> dict:
    r = ev.score(samples, detections, curve=False)
    r["matched_fp"] = ev.recall_at_fp_rate(samples, detections, 2.0)
    r["at_fp"] = {str(rate): ev.recall_at_fp_rate(samples, detections, rate) for rate in RECALL_FIRST_RATES}
    if ms is not None:
        r["ms_per_image"] = ms
    return r


def config_ms(cfg: Config, images: list[dict]) -> float:
    """Mean ms/image of the networks this configuration needs (fusion itself is negligible)."""
    import numpy as np

    srcs = {src for p in cfg.parts for src in p.sources()}
    return float(np.mean([sum(e["ms"].get(s, 0.0) for s in srcs) for e in images]))


def row(label: str, r: dict, rate: float = 2.0) -> str:
    """Recall as cached/deployed, then recall with the detections cut where FP/img reaches `rate`."""
    b = r["by_size"]
    m = r["matched_fp"] if rate == 2.0 else r["at_fp"][str(rate)]
    mb = m["by_size"]
    ms = f"{r['ms_per_image']:.0f}" if "ms_per_image" in r else "-"
    cut = "-" if m["threshold"] is None else f"{m['threshold']:.3f}"
    return (f"| {label} | " + " | ".join(ev._fmt(b[k[0]]["recall"]) for k in ev.SIZE_BUCKETS)
            + f" | {ev._fmt(r['recall'])} | {r['fp_per_image']:.2f} | {r['ap']:.3f} | "
            + " | ".join(ev._fmt(mb[k[0]]["recall"]) for k in ev.SIZE_BUCKETS)
            + f" | {ev._fmt(m['recall'])} | {m['fp_per_image']:.2f} | {cut} | {ms} |")


def header(rate: float = 2.0) -> str:
    at = f"@{rate:g}FP"
    return (f"| configuration | <8 | 8-16 | 16-32 | >=32 | all | FP/img | AP | <8 {at} | 8-16 {at} | 16-32 {at} "
            f"| >=32 {at} | all {at} | FP/img (cut) | score cut | ms/img (WIDER, 1 thread) |\n|" + "---|" * 16)


# --- the sweep ----------------------------------------------------------------------------------------


def candidate_configs(thresholds_y, thresholds_r) -> list[Config]:
    scale_sets = [(1.0,), (1.0, 2.0), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0, 4.0), (2.0, 3.0), (2.0, 3.0, 4.0), (1.0, 3.0)]
    rscale_sets = [(1.0,), (1.0, 2.0), (2.0,)]
    configs: list[Config] = []
    for ys, yt in itertools.product(scale_sets, thresholds_y):  # YuNet alone, as the default is
        configs.append(Config((Part("yunet", ys, yt),)))
    for rs, rt in itertools.product(rscale_sets, thresholds_r):
        configs.append(Config((Part("retinaface", rs, rt),)))
    for ys, yt, rs, rt in itertools.product(scale_sets[:4], thresholds_y[2:], rscale_sets, thresholds_r[2:]):
        configs.append(Config((Part("yunet", ys, yt), Part("retinaface", rs, rt))))
    return configs


def wbf_configs() -> list[Config]:
    configs = []
    for ys, rs in itertools.product([(1.0, 2.0), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0, 4.0)], [None, (1.0,), (1.0, 2.0)]):
        for wr, iou, per_scale in itertools.product([0.5, 1.0, 2.0], [0.3, 0.4, 0.55], [False, True]):
            if rs is None and wr != 1.0:
                continue
            if rs is None and not per_scale:
                continue  # one model: WBF of one detector only re-averages its own duplicates
            parts = (Part("yunet", ys, RAW_THRESHOLD),) + ((Part("retinaface", rs, RAW_THRESHOLD, wr),) if rs else ())
            configs.append(Config(parts, "wbf", iou, 0.0, per_scale))
    return configs


def centerface_configs() -> list[Config]:
    """CenterFace alone, and as the third voter beside YuNet and RetinaFace (every scale votes)."""
    configs = [Config((Part("yunet", (1.0, 2.0, 3.0), RAW_THRESHOLD), Part("retinaface", (1.0,), RAW_THRESHOLD)),
                      "wbf", 0.4, 0.0, True)]  # the two-detector default, for reference
    for cs in [(1.0,), (0.5, 1.0), (1.0, 1.5), (1.0, 2.0), (0.5, 1.0, 1.5), (1.0, 1.5, 2.0)]:
        configs.append(Config((Part("centerface", cs, 0.2),)))
        if len(cs) > 1:
            configs.append(Config((Part("centerface", cs, 0.2),), "wbf", 0.4, 0.0, True))
    yunet_sets = [(1.0, 2.0), (1.0, 2.0, 3.0)]
    cf_sets = [(1.0,), (0.5, 1.0), (1.0, 1.5), (1.0, 2.0), (0.5, 1.0, 1.5)]
    for ys, cs, ct, wc in itertools.product(yunet_sets, cf_sets, [0.1, 0.2, 0.3], [0.5, 1.0, 2.0]):
        parts = (Part("yunet", ys, RAW_THRESHOLD), Part("retinaface", (1.0,), RAW_THRESHOLD), Part("centerface", cs, ct, wc))
        configs.append(Config(parts, "wbf", 0.4, 0.0, True))
    return configs


def centerface_refine() -> list[Config]:
    """Around the best of centerface_configs: fusion IoU, RetinaFace's weight and threshold, YuNet's threshold."""
    configs = []
    for ys, cs, ct, wc in [((1.0, 2.0, 3.0), (1.0,), 0.2, 1.0), ((1.0, 2.0, 3.0), (1.0,), 0.1, 1.0),
                           ((1.0, 2.0, 3.0), (1.0,), 0.2, 2.0), ((1.0, 2.0), (1.0, 1.5), 0.2, 1.0),
                           ((1.0, 2.0, 3.0), (0.5, 1.0), 0.2, 1.0), ((1.0, 2.0), (1.0, 2.0), 0.2, 1.0)]:
        for yt, rt, wr, iou in itertools.product([0.3, 0.5], [0.3, 0.5], [1.0, 2.0], [0.3, 0.4, 0.5]):
            parts = (Part("yunet", ys, yt), Part("retinaface", (1.0,), rt, wr), Part("centerface", cs, ct, wc))
            configs.append(Config(parts, "wbf", iou, 0.0, True))
    # the two best within the CPU budget (<= ~1.6x the two-detector default): CenterFace's threshold and
    # weight, and the fusion IoU
    for ys, cs in [((1.0, 2.0, 3.0), (1.0,)), ((1.0, 2.0), (1.0, 1.5)), ((1.0, 2.0), (1.0,))]:
        for ct, wc, iou in itertools.product([0.25, 0.3, 0.4], [1.5, 2.0, 3.0], [0.35, 0.4, 0.45]):
            parts = (Part("yunet", ys, RAW_THRESHOLD), Part("retinaface", (1.0,), RAW_THRESHOLD), Part("centerface", cs, ct, wc))
            configs.append(Config(parts, "wbf", iou, 0.0, True))
    return configs


FAMILIES = {"base": lambda: candidate_configs([0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9],
                                              [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97]) + wbf_configs(),
            "centerface": centerface_configs, "refine": centerface_refine}


def beats_peer(r: dict, peer: dict) -> bool:
    """Recall at 2 FP/img at least the peer's in every size bucket."""
    mine, theirs = r["matched_fp"]["by_size"], peer["matched_fp"]["by_size"]
    return all((mine[b[0]]["recall"] or 0) >= (theirs[b[0]]["recall"] or 0) for b in ev.SIZE_BUCKETS)


def sweep(top: int, out: Path, families: list[str] | None = None) -> None:
    samples, images, settings = load_cache()
    print(f"{len(images)} images from {CACHE}; raw threshold {settings['raw_threshold']}")
    results: dict[str, dict] = {}

    def add(cfg: Config) -> dict:
        dets = run_config(cfg, images)
        r = summarize(samples, dets, config_ms(cfg, images))
        r["config"] = cfg.label()
        results[cfg.label()] = r
        return r

    has_cf = any(k.startswith("centerface@") for k in images[0]["dets"])
    families = families or (list(FAMILIES) if has_cf else ["base"])
    configs = [cfg for f in families for cfg in FAMILIES[f]()]
    for i, cfg in enumerate(configs):
        add(cfg)
        if i % 50 == 0:
            print(f"{i}/{len(configs)}", flush=True)
    for key in [k for k in images[0]["dets"] if k.startswith("deface")]:
        peer = [cached_faces(e, key) for e in images]
        import numpy as np

        r = summarize(samples, peer, float(np.mean([e["ms"][key] for e in images])))
        r["config"] = key
        results[key] = r
    payload = {"settings": settings, "results": {k: {kk: vv for kk, vv in v.items() if kk != "wider"} for k, v in results.items()}}
    out.write_text(json.dumps(payload, indent=1))
    ranked_fp = sorted((r for r in results.values() if r["fp_per_image"] <= 2.0), key=lambda r: -r["recall"])
    ranked_matched = sorted(results.values(), key=lambda r: -r["matched_fp"]["recall"])
    sections = [("best recall with FP/img <= 2 (as deployed)", ranked_fp),
                ("best recall at the matched rate of 2 FP/img (cut on own scores)", ranked_matched)]
    for rate in RECALL_FIRST_RATES:
        sections.append((f"recall first: best recall at <= {rate:g} FP/img (cut on own scores)",
                         sorted(results.values(), key=lambda r: -r["at_fp"][str(rate)]["recall"])))
    peers = [r for k, r in results.items() if k.startswith("deface")]
    if peers:
        sections.append((f"beats {peers[0]['config']} in every size bucket at 2 FP/img, best overall",
                         [r for r in ranked_matched if beats_peer(r, peers[0])]))
    for (title, ranked), rate in zip(sections, (2.0, 2.0) + RECALL_FIRST_RATES + (2.0,)):
        print(f"\n## {title}\n{header(rate)}")
        for r in ranked[:top]:
            print(row(r["config"], r, rate))
    print(f"\nwrote {out}")


def time_policies(policies: list[str], photos: Path, rounds: int, threads: int) -> dict:
    """ms/image of each policy's detection (as the pipeline builds it) on the photos, rounds interleaved
    so a background load hits every policy alike; the first image of each policy is a warm-up."""
    import cv2
    import numpy as np
    import torch

    from anonymizer.detect import build_ensemble
    from anonymizer.policy import load_policy

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(photos.glob("*.jpg"))]
    ensembles = {}
    for path in policies:
        policy = load_policy(None if path == "default" else path)
        ensembles[path] = build_ensemble(policy.detection, policy.model_dir)
        ensembles[path].detect(images[0])
    ms: dict[str, list[float]] = {p: [] for p in policies}
    faces: dict[str, list[int]] = {p: [] for p in policies}
    for _ in range(rounds):
        for image in images:
            for path, ensemble in ensembles.items():
                t0 = time.perf_counter()
                found = ensemble.detect(image)
                ms[path].append((time.perf_counter() - t0) * 1000)
                faces[path].append(len(found))
    out = {p: {"ms_per_image_mean": float(np.mean(v)), "ms_per_image_median": float(np.median(v)),
               "faces_per_image": float(np.mean(faces[p])), "images": len(images), "rounds": rounds,
               "threads": threads} for p, v in ms.items()}
    for p, r in out.items():
        print(f"{p}: {r['ms_per_image_mean']:.0f} ms/image mean, {r['ms_per_image_median']:.0f} median, "
              f"{r['faces_per_image']:.1f} faces/image ({len(images)} photos x {rounds}, {threads} thread(s))")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--data", default=str(SHARED / "data" / "widerface_val_subset"))
    c.add_argument("--model-dir", default=os.environ.get("ANONYMIZER_MODEL_DIR") or str(SHARED / "models"))
    c.add_argument("--out", default=str(CACHE))
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--skip-peer", action="store_true")
    c.add_argument("--venv", default="/tmp/deface-venv")
    c.add_argument("--threads", type=int, default=1, help="CPU threads for OpenCV and torch (timings depend on it)")
    c.add_argument("--add", default=None, metavar="DETECTOR",
                   help="only run this detector (centerface) and add it to the existing cache at --out")
    s = sub.add_parser("sweep")
    s.add_argument("--top", type=int, default=15)
    s.add_argument("--out", default=str(REPO / "bench" / "results" / "detection_sweep.json"))
    s.add_argument("--families", default=None,
                   help=f"comma-separated, of {','.join(FAMILIES)} (default: all of them when the cache has CenterFace)")
    t = sub.add_parser("time", help="ms/image of policies' detection on the photos")
    t.add_argument("policies", nargs="+", help="policy files ('default': the packaged default policy)")
    t.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", default=str(REPO / "bench" / "results" / "detection_time.json"))
    args = p.parse_args(argv)
    if args.cmd == "time":
        result = time_policies(args.policies, Path(args.photos), args.rounds, args.threads)
        Path(args.out).write_text(json.dumps(result, indent=2))
    elif args.cmd == "cache" and args.add:
        add_to_cache(args.add, args.model_dir, Path(args.out), args.threads)
    elif args.cmd == "cache":
        build_cache(Path(args.data), args.model_dir, Path(args.out), args.limit, args.skip_peer, Path(args.venv), args.threads)
    else:
        sweep(args.top, Path(args.out), args.families.split(",") if args.families else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
