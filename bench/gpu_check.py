"""Images/s of the detection + measurement stack on 1080p frames, batched, with the networks on a GPU where
their runtime has one: the check to run when a GPU machine is lent (bench/gpu_check.sh); it runs on the CPU
too (`--device cpu --frames 4`), which is how the tests keep it working.

The default policy's parts, called as library functions (no Ray, no Prefect, no policy loader: the GPU
machine has none of them): the detection ensemble over a batch of frames at once (`Ensemble.detect_batch`:
RetinaFace's scales and tiles of every frame share forward passes), the blur operator, a JPEG round trip,
then the measurements on the released pixels: the policy's auditor (skipped where its library is
missing), outside change and coverage, re-identification with MobileFaceNet
over every scored face of the batch in one call (`embed_chips`), and the head pose before and after (YuNet
windows, as the profiles that keep a face measure and gate it). Where each network ran is printed:
every network is an ONNX graph, run by onnxruntime-gpu where it is installed, else by torch on the GPU
(`anonymizer.onnx_torch`); torch writes RetinaFace's and MTCNN's graphs from their weights once.

Frames: 2x2 mosaics of the photos, each tile resized to cover 960x540 and centre-cropped.

`--processes P` runs P processes, each with its own networks on the device and --threads threads, the frames
shared between them: Ray's actors sharing one GPU, each with its own interpreter.

`--stylegan N` then renders N MobileStyleGAN faces (1024²) for a face bank through torch
(`anonymizer.bank.ir_torch`, `--stylegan-batch` per pass) and prints faces/s; it needs `<model dir>/mobilestylegan/`
and `openvino` (its IR reader), or the torch modules `--save-stylegan` writes where openvino is.

    python bench/gpu_check.py [--model-dir DIR] [--device cuda|cpu] [--frames 64] [--batch 8] [--processes 1] [--threads 1]
                              [--budget-s 180] [--stylegan 64 [--stylegan-batch 16]] [--save-stylegan DIR]
                              [--out bench/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the library from this checkout, installed or not (the GPU machine)
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))
FRAME = (1920, 1080)


def mosaics(photo_dir: Path, n: int) -> list[np.ndarray]:
    """n RGB 1920x1080 frames, each four photos in a 2x2 grid (cycling through the folder)."""
    photos = []
    for p in sorted(photo_dir.iterdir()):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR) if p.suffix.lower() in (".jpg", ".jpeg", ".png") else None
        if bgr is not None:
            photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not photos:
        raise SystemExit(f"no photo in {photo_dir}")
    tw, th = FRAME[0] // 2, FRAME[1] // 2
    tiles = []
    for im in photos:
        s = max(tw / im.shape[1], th / im.shape[0])
        big = cv2.resize(im, (round(im.shape[1] * s), round(im.shape[0] * s)), interpolation=cv2.INTER_AREA)
        y, x = (big.shape[0] - th) // 2, (big.shape[1] - tw) // 2
        tiles.append(big[y:y + th, x:x + tw])
    made: dict[tuple[int, ...], np.ndarray] = {}  # the frames repeat: each is made once, and shared
    out = []
    for i in range(n):
        key = tuple((4 * i + k) % len(tiles) for k in range(4))
        if key not in made:
            t = [tiles[j] for j in key]
            made[key] = np.ascontiguousarray(np.vstack([np.hstack(t[:2]), np.hstack(t[2:])]))
        out.append(made[key])
    return out


def build(model_dir: str, device: str) -> dict:
    """The default policy's detection, operator and measurement parts (policies/default.yaml), and the pose
    measurement of policies/realistic.yaml."""
    from anonymizer.anonymize import ANONYMIZERS
    from anonymizer.detect import Ensemble, build_detector
    from anonymizer.measure.mobilefacenet import MobileFaceNetEncoder
    from anonymizer.measure.pose import PoseMeter

    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    d, m, a = policy["detection"], policy["measurement"], policy["anonymization"]
    # The default does not measure pose (blur keeps none); the profiles that keep a face do, and gate it.
    pose = yaml.safe_load((REPO / "policies" / "realistic.yaml").read_text())["measurement"]["pose_landmarks"]
    ort_device = {"device": "auto" if device == "cuda" else "cpu"}
    on_device = {"retinaface": ort_device, "centerface": ort_device, "yunet": ort_device}
    detectors = [build_detector(c["name"], {**c.get("params", {}), **on_device.get(c["name"], {})}, model_dir)
                 for c in d["detectors"]]
    parts = {
        "ensemble": Ensemble(detectors, d["merge_iou"], d["merge"], [c.get("weight", 1.0) for c in d["detectors"]],
                             d["min_score"], d["vote_per_scale"]),
        "operator": ANONYMIZERS.create(a["operator"]["name"], **a["operator"].get("params", {}), **a["region"]),
        "encoder": MobileFaceNetEncoder(model_dir, device="auto" if device == "cuda" else "cpu"),
        "pose": PoseMeter(build_detector(pose["name"], {**pose["params"], **ort_device}, model_dir)),
        "auditor": None,
        "settings": {k: m[k] for k in ("min_reid_face_px", "covered_fraction", "change_tolerance", "mask_margin_px")},
    }
    try:
        parts["auditor"] = build_detector(d["auditor"]["name"], {**d["auditor"]["params"], **ort_device}, model_dir)
    except ImportError as exc:  # its library is missing there
        print(f"auditor {d['auditor']['name']}: skipped ({exc})")
    return parts


def _runtime(det) -> str:
    """Where an onnxruntime-or-OpenCV detector runs (MTCNN: its first network)."""
    session = getattr(det, "_session", None) or getattr(det, "_pnet", None)
    return session.get_providers()[0] if session is not None else "CPU (OpenCV)"


def where(parts: dict) -> dict:
    """The device each network runs on."""
    ens = parts["ensemble"]
    out = {}
    for det in ens.detectors:
        out[det.name] = _runtime(det)
    out["mobilefacenet"] = parts["encoder"]._session.get_providers()[0]
    out["pose (yunet)"] = _runtime(parts["pose"].detector)
    aud = parts["auditor"]
    out["auditor"] = f"{aud.name} on {_runtime(aud)}" if aud is not None else "skipped"
    return out


def run_batch(parts: dict, frames: list[np.ndarray], t: dict, counts: dict) -> None:
    """The stack on one batch of frames; seconds per stage added to `t`."""
    from anonymizer import imageio
    from anonymizer.anonymize import face_rngs
    from anonymizer.measure.metrics import MeasureSettings, image_measurements

    s = MeasureSettings(**parts["settings"])
    t0 = time.perf_counter()
    faces = parts["ensemble"].detect_batch(frames)
    t1 = time.perf_counter()
    released = []
    results = []
    for i, (im, fs) in enumerate(zip(frames, faces)):
        r = parts["operator"].anonymize(im, fs, face_rngs(0, f"frame{i}", len(fs)))
        like = imageio.Decoded(rgb=im, alpha=None, format="JPEG", mode="RGB", grayscale=False)
        released.append(imageio.decode(imageio.encode(r.image, like, 95), 10**8).rgb)
        results.append(r)
    t2 = time.perf_counter()
    for im, rel, r in zip(frames, released, results):
        audited = parts["auditor"].detect(im) if parts["auditor"] is not None else []
        image_measurements(r, im, rel, audited, s)
        counts["auditor_faces"] += len(audited)
    t3 = time.perf_counter()
    enc, chips_a, chips_b = parts["encoder"], [], []
    for im, rel, fs in zip(frames, released, faces):
        scored = [f for f in fs if f.size >= s.min_reid_face_px and f.landmarks is not None]
        if scored:
            m = enc.align(im, scored)
            chips_a.append(enc._aligner.chips(im, m))
            chips_b.append(enc._aligner.chips(rel, m))
    if chips_a:
        a, b = enc.embed_chips(np.concatenate(chips_a)), enc.embed_chips(np.concatenate(chips_b))
        counts["reid_scored"] += len(a)
        counts["reid_distance_sum"] += float(np.linalg.norm(a - b, axis=1).sum())
    t4 = time.perf_counter()
    for im, rel, fs in zip(frames, released, faces):
        counts["pose_measured"] += sum(p is not None for p in parts["pose"].measure(im, rel, fs, s.min_reid_face_px))
    t5 = time.perf_counter()
    counts["faces"] += sum(len(fs) for fs in faces)
    for k, v in {"detect": t1 - t0, "anonymize+jpeg": t2 - t1, "auditor+coverage": t3 - t2, "reid": t4 - t3,
                 "pose": t5 - t4}.items():
        t[k] += v


def stylegan_modules(model_dir: str) -> tuple | None:
    """MobileStyleGAN's mapping and synthesis networks as torch modules: read from the IR (openvino, its
    reader), else from the modules `--save-stylegan` wrote into `<model dir>/mobilestylegan/` (the GPU
    machine has no openvino); None where neither is there."""
    import torch

    try:
        import openvino  # noqa: F401
    except ImportError:
        saved = [Path(model_dir) / "mobilestylegan" / f"{n}.pt" for n in ("MappingNetwork", "SynthesisNetwork")]
        if all(p.is_file() for p in saved):
            return tuple(torch.load(p, weights_only=False) for p in saved)
    else:
        from anonymizer.bank.ir_torch import IRModule
        from anonymizer.bank.stylegan import locate_stylegan

        d = locate_stylegan(model_dir)
        return IRModule(d / "MappingNetwork.xml"), IRModule(d / "SynthesisNetwork.xml")
    print("stylegan: skipped (pip install openvino, the IR's reader, or bring modules written by --save-stylegan)")
    return None


def stylegan_rate(model_dir: str, device: str, n: int, batch: int) -> dict | None:
    """Faces/s of the bank's StyleGAN renders through torch on `device` (mapping and synthesis, float32 as
    `anonymizer.bank.stylegan.Renderer` runs them), or None where the networks cannot be read."""
    import torch

    nets = stylegan_modules(model_dir)
    if nets is None:
        return None
    mapping, synthesis = (m.to(device).eval() for m in nets)
    z = torch.randn(n, 512, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        synthesis(mapping(z[:batch]))  # warm-up
        sync()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            synthesis(mapping(z[i:i + batch])).cpu()
        sync()
    wall = time.perf_counter() - t0
    print(f"stylegan: {n} faces of 1024x1024 in {wall:.1f} s, {n / wall:.2f} faces/s on {device} (batch {batch})")
    return {"faces": n, "batch": batch, "wall_s": wall, "faces_per_s": n / wall}


def measure(args: argparse.Namespace, device: str, rank: int, barrier) -> dict:
    """One process's share of the frames (every `args.processes`-th batch from `rank`), its batches
    `args.threads` at a time on threads sharing its networks; timed from when every process has loaded
    and warmed up its networks (`barrier`); no batch starts after `args.budget_s` of that."""
    if args.processes > 1:  # the machine's cores shared between the processes (ONNX Runtime takes OpenCV's count)
        cv2.setNumThreads(max(1, (os.cpu_count() or 1) // args.processes))
    frames = mosaics(args.photos, args.frames)
    parts = build(args.model_dir, device)
    placement = where(parts)
    if rank == 0:
        print("networks:", ", ".join(f"{k}: {v}" for k, v in placement.items()), flush=True)
    run_batch(parts, frames[:1], defaultdict(float), defaultdict(float))  # warm-up: cuDNN, per-size buffers
    t: dict = defaultdict(float)
    counts: dict = defaultdict(float)
    merging = threading.Lock()

    def one(batch: list[np.ndarray]) -> int:
        if time.time() - start > args.budget_s:
            return 0
        bt: dict = defaultdict(float)
        bc: dict = defaultdict(float)
        run_batch(parts, batch, bt, bc)
        with merging:
            for acc, part in ((t, bt), (counts, bc)):
                for k, v in part.items():
                    acc[k] += v
        return len(batch)

    batches = [frames[i:i + args.batch] for i in range(0, len(frames), args.batch)][rank::args.processes]
    if barrier is not None:
        barrier.wait()
    start = time.time()
    with ThreadPoolExecutor(args.threads) as pool:  # the CPU's share (decoding, warping, glue) in parallel
        done = sum(pool.map(one, batches))
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return {"frames": done, "start": start, "end": time.time(), "stage_s": dict(t), "counts": dict(counts),
            "networks": placement}


def _measured(results, *args) -> None:
    try:
        results.put(measure(*args))
    except BaseException as exc:  # the parent waits for every process's result
        results.put({"error": repr(exc)})
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    ap.add_argument("--model-dir", default=os.environ.get("ANONYMIZER_MODEL_DIR", str(SHARED / "models")))
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when torch sees one")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="frames per detect_batch call")
    ap.add_argument("--threads", type=int, default=1, help="batches in flight at once, each on a thread: the "
                                                             "networks are shared, the CPU work runs in parallel")
    ap.add_argument("--processes", type=int, default=1, help="processes sharing the device, each with its own "
                                                               "networks and --threads threads (Ray actors sharing a GPU)")
    ap.add_argument("--budget-s", type=float, default=180.0, help="no batch starts this long after the networks are "
                                                                   "loaded (the check must fit in 5 minutes)")
    ap.add_argument("--stylegan", type=int, default=0, help="then render this many StyleGAN bank faces")
    ap.add_argument("--stylegan-batch", type=int, default=16)
    ap.add_argument("--save-stylegan", type=Path, metavar="DIR",
                    help="only write MobileStyleGAN's networks as torch modules into DIR (read with openvino here; "
                         "on a machine without it, put them in <model dir>/mobilestylegan/)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    args = ap.parse_args()
    import torch

    if args.save_stylegan:
        args.save_stylegan.mkdir(parents=True, exist_ok=True)
        for net, name in zip(stylegan_modules(args.model_dir) or (), ("MappingNetwork", "SynthesisNetwork")):
            torch.save(net, args.save_stylegan / f"{name}.pt")
            print(f"wrote {args.save_stylegan / name}.pt")
        return

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    if args.processes == 1:
        parts = [measure(args, device, 0, None)]
    else:  # each process loads its own networks onto the device, as Ray actors sharing a GPU would
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(args.processes), ctx.Queue()
        procs = [ctx.Process(target=_measured, args=(results, args, device, r, barrier))
                 for r in range(args.processes)]
        for p in procs:
            p.start()
        parts = [results.get() for _ in procs]
        for p in procs:
            p.join()
        if any("error" in p for p in parts):
            raise SystemExit(f"a process failed: {[p['error'] for p in parts if 'error' in p]}")
    t: dict = defaultdict(float)
    counts: dict = defaultdict(float)
    for part in parts:
        for acc, got in ((t, part["stage_s"]), (counts, part["counts"])):
            for k, v in got.items():
                acc[k] += v
    done = sum(p["frames"] for p in parts)
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    if done < args.frames:
        print(f"budget of {args.budget_s:.0f} s reached after {done} frames")
    result = {
        "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cpus": os.cpu_count(), "machine": platform.platform(), "frame": list(FRAME), "frames": done,
        "batch": args.batch, "processes": args.processes, "threads": args.threads, "wall_s": wall,
        "images_per_s": done / wall if wall else None, "stage_s": dict(t),
        "faces": int(counts["faces"]), "reid_scored": int(counts["reid_scored"]),
        "pose_measured": int(counts["pose_measured"]), "auditor_faces": int(counts["auditor_faces"]),
        "networks": parts[0]["networks"], "command": " ".join(sys.argv),
    }
    print(f"{done} frames of {FRAME[0]}x{FRAME[1]} in {wall:.1f} s: {result['images_per_s']:.2f} images/s on {device}"
          f" ({result['faces']} faces, {result['reid_scored']} re-identification scored, {result['pose_measured']} poses)")
    print(f"stage s (summed over {args.processes} x {args.threads} threads): "
          + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    if args.stylegan:
        result["stylegan"] = stylegan_rate(args.model_dir, device, args.stylegan, args.stylegan_batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
