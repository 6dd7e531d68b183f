"""Measure CenterFace's activation ranges for its int8 copy (anonymizer.detect.int8) on real photos.

The photos run at the scales the default policy runs CenterFace at, prepared as the detector prepares them;
the ranges land in anonymizer/detect/centerface_int8_ranges.json, which is committed: every machine then
makes the same int8 copy without the photos. Run again only when the model or the scales change, and measure
recall again (`anonymizer eval detection`, docs/benchmarks.md).

    python training/calibrate_int8.py ../shared/data/photos [--scales 1,1.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anonymizer.detect.centerface import free_sized, network_input  # noqa: E402
from anonymizer.detect.int8 import prepared, quantize, ranges_file  # noqa: E402
from anonymizer.models import locate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("--scales", default="1,1.5")
    ap.add_argument("--model-dir")
    args = ap.parse_args()
    import onnx

    model = free_sized(locate("centerface", args.model_dir).read_bytes())
    name = onnx.load_from_string(model).graph.input[0].name
    paths = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    scales = [float(s) for s in args.scales.split(",")]

    def feeds():
        for p in paths:
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            for s in scales:
                x = network_input(rgb, s)
                if x is not None:
                    yield {name: x}

    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = feeds()

        def get_next(self):
            return next(self.it, None)

    out = ranges_file("centerface")
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        quantize(prepared(model), Path(tmp) / "int8.onnx", out, Feeds())
    print(f"{out}: ranges from {len(paths)} photos at scales {scales}")


if __name__ == "__main__":
    main()
