"""Our detectors against the peer tool `deface` (CenterFace) on the WIDER FACE val subset, same scoring.

deface pulls in opencv-python, which would overwrite our opencv-python-headless, so it runs in its own
virtualenv (created on first use; default /tmp/deface-venv, outside the checkout) through a small script
that writes its detections as JSON. Both sides see byte-identical aspect-restored images: we write them
once as PNGs and the peer reads those.

Two tables: recall by size as each side ships (its own score threshold, so FP/img differs), and recall at
a matched false-positive rate: every detector's detections cut on its own score ranking where FP/img
reaches 2 (anonymizer.eval.detection.recall_at_fp_rate), the fair side-by-side. deface runs at its
default threshold 0.2 (about 6 FP/img here), so cutting it higher is possible; ours reach 2 FP/img only
where their shipped threshold lets them (a `*` in the cut column: all detections kept, fewer FP).
`policy` is the --policy file's (else the default policy's) detection section as the pipeline runs it.

    python bench/detection_peer.py [--data DIR] [--out bench/results] [--limit N] [--policy FILE]
        [--detectors yunet,retinaface,ensemble,policy,policy:OTHER.yaml] [--fp-rate 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anonymizer.eval import detection as ev  # noqa: E402
from anonymizer.faces import Face  # noqa: E402

SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO / ".." / "shared"))

# Runs inside the deface venv: CenterFace as `deface` itself calls it (RGB frame, original size).
PEER_SCRIPT = r"""
import json, sys, time
import cv2
from deface.centerface import CenterFace
jobs, thresh, out = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3]
net = CenterFace(in_shape=None, backend="auto")
results = []
for job in jobs:
    rgb = cv2.cvtColor(cv2.imread(job["path"]), cv2.COLOR_BGR2RGB)
    t0 = time.perf_counter()
    dets, _ = net(rgb, threshold=thresh)
    ms = (time.perf_counter() - t0) * 1000
    results.append({"name": job["name"], "ms": ms, "dets": [[float(v) for v in d[:5]] for d in dets]})
json.dump({"backend": net.backend, "results": results}, open(out, "w"))
"""


def ensure_peer_venv(path: Path) -> Path:
    """The deface virtualenv's python, creating it (pip install deface) when it does not exist yet."""
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path} and installing deface (keeps opencv-python out of our environment)")
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "deface"], check=True)
    return python


def write_restored(samples: list[ev.Sample], folder: Path, max_side: int | None) -> list[dict]:
    jobs = []
    for s in samples:
        path = folder / (Path(s.name).stem + ".png")
        cv2.imwrite(str(path), cv2.cvtColor(ev.load_restored(s, max_side), cv2.COLOR_RGB2BGR))
        jobs.append({"name": s.name, "path": str(path), "size": ev.restored_size(s, max_side)})
    return jobs


def run_peer(python: Path, jobs: list[dict], thresh: float, workdir: Path) -> tuple[list[list[Face]], list[float], str]:
    """CenterFace detections (416 frame) and ms per image, from the subprocess's JSON."""
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    (workdir / "peer.py").write_text(PEER_SCRIPT)
    out = workdir / "peer_out.json"
    subprocess.run([str(python), str(workdir / "peer.py"), str(workdir / "jobs.json"), str(thresh), str(out)], check=True)
    payload = json.loads(out.read_text())
    detections, ms = [], []
    for job, r in zip(jobs, payload["results"]):
        faces = [Face(x0, y0, x1 - x0, y1 - y0, s, "deface") for x0, y0, x1, y1, s in r["dets"]]
        detections.append(ev.to_eval_frame(faces, tuple(job["size"])))
        ms.append(r["ms"])
    return detections, ms, payload["backend"]


def run_ours(name: str, samples: list[ev.Sample], jobs: list[dict], policy: str | None, model_dir: str | None,
             fp_rate: float = ev.MATCHED_FP_RATE) -> dict:
    """Our detector on the same PNGs the peer reads, timed the same way (detection call only).
    `policy:FILE` is that policy file's detection (so an old and a new policy can sit side by side)."""
    if name.startswith("policy:"):
        detector = ev.build_named_detector("policy", name.split(":", 1)[1], model_dir)
    else:
        detector = ev.build_named_detector(name, policy, model_dir)
    detections, ms = [], []
    for job in jobs:
        image = cv2.cvtColor(cv2.imread(job["path"]), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        faces = detector.detect(image)
        ms.append((time.perf_counter() - t0) * 1000)
        detections.append(ev.to_eval_frame(faces, tuple(job["size"])))
    return ev.score(samples, detections, ms_per_image=ms, fp_rate=fp_rate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "widerface_val_subset"))
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--detectors", default="yunet,retinaface,ensemble,policy")
    p.add_argument("--policy", default=None)
    p.add_argument("--model-dir", default=os.environ.get("ANONYMIZER_MODEL_DIR") or str(SHARED / "models"))
    p.add_argument("--venv", default="/tmp/deface-venv", help="the deface virtualenv (created if missing)")
    p.add_argument("--thresh", type=float, default=0.2, help="CenterFace threshold (deface's default)")
    p.add_argument("--fp-rate", type=float, default=ev.MATCHED_FP_RATE, help="FP/img of the matched operating point")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-side", type=int, default=None)
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for our detectors (OpenCV, torch)")
    args = p.parse_args(argv)
    import torch

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)

    samples = ev.select_samples(ev.load_ground_truth(args.data), args.limit)
    results: dict[str, dict] = {}
    settings = vars(args).copy()
    with tempfile.TemporaryDirectory(prefix="detection_peer_") as tmp:
        jobs = write_restored(samples, Path(tmp), args.max_side)
        for name in [n.strip() for n in args.detectors.split(",") if n.strip()]:
            results[name] = run_ours(name, samples, jobs, args.policy, args.model_dir, args.fp_rate)
            print(f"{name}: done", flush=True)
        if not args.skip_peer:
            python = ensure_peer_venv(Path(args.venv))
            detections, ms, backend = run_peer(python, jobs, args.thresh, Path(tmp))
            results[f"deface@{args.thresh}"] = ev.score(samples, detections, ms_per_image=ms, fp_rate=args.fp_rate)
            settings["deface_backend"] = backend
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ev.write_outputs(results, out, settings, stem="detection_peer")
    print(ev.markdown_table(results))
    print(f"\nwrote {out / 'detection_peer.json'} and {out / 'detection_peer.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
