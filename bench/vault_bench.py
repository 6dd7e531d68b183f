"""What the recovery vault costs: bytes stored per face, sealing rate, and recover throughput.

Every photo of ../shared/data/photos is decoded, its faces found by YuNet, each face region (the default
policy's window: box × 1.35, grown upward) blurred, and the release written as JPEG (quality 95, as the
pipeline does). The vault (file KEK) stores every window's original pixels; then `recover` writes the
originals back as PNG. All local, on disk: the figures are CPU and codec cost, not network.

    python bench/vault_bench.py [--repeat 3] [--workers 2] [--out bench/results/vault_bench.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="copies of the photo set (distinct keys)")
    ap.add_argument("--workers", type=int, default=2, help="recover's threads")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vault_bench.json")
    args = ap.parse_args()

    from anonymizer import imageio
    from anonymizer.detect import build_detector
    from anonymizer.regions import face_region
    from anonymizer.storage import Location
    from anonymizer.vault import FileKey, VaultWriter, new_key_file, recover

    detector = build_detector("yunet", {"score_threshold": 0.6}, str(SHARED / "models"))
    photos = []
    for path in sorted((SHARED / "data" / "photos").glob("*.jpg")):
        dec = imageio.decode(path.read_bytes(), 1 << 28)
        masks = [face_region(f, dec.rgb.shape[:2], 1.35, "ellipse", 0.15) for f in detector.detect(dec.rgb)]
        masks = [m for m in masks if m.alpha.size]
        img = dec.rgb.copy()
        for m in masks:
            ys, xs = m.window
            img[ys, xs] = cv2.GaussianBlur(dec.rgb[ys, xs], (0, 0), 9.0)
        photos.append((path.name, dec, masks, imageio.encode(img, dec)))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        release = Location.parse(str(tmp / "dest" / "bench"))
        kek = FileKey(new_key_file(tmp / "kek.b64"))
        rows, faces, raw = [], 0, 0
        for r in range(args.repeat):
            for name, _, masks, data in photos:
                key = f"set{r}/{name}"
                release.write_bytes("images/" + key, data)
                rows.append({"key": key, "output_key": "images/" + key, "output_sha256": hashlib.sha256(data).hexdigest(),
                             "run_id": "bench", "faces": len(masks)})
        release.write_table("manifest.parquet", pa.Table.from_pylist(rows))
        sha = {r["key"]: r["output_sha256"] for r in rows}

        t0 = time.perf_counter()
        writer = VaultWriter(str(tmp / "vault"), "bench", kek)
        for r in range(args.repeat):
            for name, dec, masks, _ in photos:
                key = f"set{r}/{name}"
                for i, m in enumerate(masks):
                    ys, xs = m.window
                    writer.add(key, i, (m.x0, m.y0, m.alpha.shape[1], m.alpha.shape[0]), dec.rgb[ys, xs], sha[key])
                    faces += 1
                    raw += m.alpha.size * 3
                writer.stage(key)  # per image, the finest unit: the most objects to gather at commit
        info = writer.commit()
        seal_s = time.perf_counter() - t0
        vault_bytes = sum(p.stat().st_size for p in (tmp / "vault").rglob("*") if p.is_file())
        records_bytes = (tmp / "vault" / "runs" / "bench" / "records.parquet").stat().st_size

        t0 = time.perf_counter()
        result = recover(release.uri, str(tmp / "vault"), kek, str(tmp / "originals"), workers=args.workers)
        recover_s = time.perf_counter() - t0
        out_bytes = sum(p.stat().st_size for p in (tmp / "originals").rglob("*.png"))
        released_bytes = sum(len(p[3]) for p in photos) * args.repeat

    figures = {
        "images": len(rows), "faces": faces, "records": info.records,
        "face_window_mean_px": round(raw / 3 / max(faces, 1)),
        "vault_bytes": vault_bytes, "vault_bytes_per_face": round(vault_bytes / max(faces, 1)),
        "records_bytes_per_face": round(records_bytes / max(faces, 1)),
        "raw_window_bytes_per_face": round(raw / max(faces, 1)),
        "vault_vs_raw": round(vault_bytes / max(raw, 1), 3),
        "vault_vs_release": round(vault_bytes / released_bytes, 3),
        "seal_seconds": round(seal_s, 3), "seal_faces_per_s": round(faces / seal_s, 1),
        "recover_seconds": round(recover_s, 3), "recover_images_per_s": round(len(rows) / recover_s, 2),
        "recover_faces_per_s": round(result.faces / recover_s, 1), "recover_workers": args.workers,
        "recovered_png_bytes": out_bytes, "cpu_count": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
