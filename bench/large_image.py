"""Time and peak memory of one image at the default policy's pixel limit (100 MP, 10,000 × 10,000), through
the same `anonymize_image` the workers call. Prints a line, writes JSON.

    python bench/large_image.py [--side 10000] [--out bench/results/large_image.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ANONYMIZER_MODEL_DIR", str(Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared")) / "models"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--side", type=int, default=10_000)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "large_image.json"))
    args = ap.parse_args()
    from PIL import Image

    from anonymizer.policy import load_policy
    from anonymizer.components import Components
    from anonymizer.pipeline.image import ImageSettings, anonymize_image

    buf = io.BytesIO()
    Image.new("RGB", (args.side, args.side), (120, 130, 140)).save(buf, "PNG")  # compresses to ~300 kB
    policy = load_policy()
    components = Components.from_policy(policy)
    t = time.perf_counter()
    r = anonymize_image("large.png", buf.getvalue(), ImageSettings.from_policy(policy), components)
    result = {
        "pixels": args.side ** 2, "png_bytes": len(buf.getvalue()), "error": r.image.get("error"),
        "seconds": round(time.perf_counter() - t, 1),
        "stages_s": {k: round(r.image.get(k) or 0, 1) for k in ("decode_s", "detect_s", "anonymize_s", "measure_s")},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
