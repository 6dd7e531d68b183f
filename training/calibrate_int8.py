"""Measure a network's activation ranges for its int8 copy (anonymizer.int8) on real data.

CenterFace: photos at the scales the default policy runs it at, prepared as the detector prepares them.
The recognizers the face bank's identity guard runs (dlib_resnet, mobilefacenet): the largest face YuNet
finds in each of `--limit` images spread over a folder (LFW), aligned as the recognizer aligns it. The
ranges land in anonymizer/int8_ranges/NETWORK.json, which is committed: every machine then makes the same
int8 copy without the data. Run again only when a model or the scales change, and measure again
(docs/benchmarks.md: `anonymizer eval detection` for CenterFace, `anonymizer eval generation` for the guard).

    python training/calibrate_int8.py ../shared/data/photos [--scales 1,1.5]
    python training/calibrate_int8.py ../shared/data/lfw/images --network dlib_resnet [--limit 200]
    python training/calibrate_int8.py ../shared/data/lfw/images --network mobilefacenet [--limit 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anonymizer.int8 import prepared, quantize, ranges_file  # noqa: E402
from anonymizer.models import locate  # noqa: E402

IMAGES = (".jpg", ".jpeg", ".png")


def centerface(data: Path, args) -> tuple[bytes, Iterator[np.ndarray]]:
    from anonymizer.detect.centerface import free_sized, network_input

    paths = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGES)
    scales = [float(s) for s in args.scales.split(",")]

    def inputs():
        for p in paths:
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            for s in scales:
                x = network_input(rgb, s)
                if x is not None:
                    yield x

    return free_sized(locate("centerface", args.model_dir).read_bytes()), inputs()


def recognizer(data: Path, args) -> tuple[bytes, Iterator[np.ndarray]]:
    """The recognizer's float32 model and its inputs for the largest face of each image."""
    from anonymizer.detect import build_detector
    from anonymizer.measure.encoder import build_encoder

    enc = build_encoder(args.network, {"device": "cpu"}, args.model_dir)
    yunet = build_detector("yunet", {"scales": [1.0], "score_threshold": 0.5}, args.model_dir)
    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGES)
    paths = paths[::max(1, len(paths) // args.limit)][:args.limit]  # spread over the folder's people
    if args.network == "dlib_resnet":
        from anonymizer.measure.dlib_resnet_torch import onnx_export

        model = onnx_export(locate("dlib_resnet", args.model_dir))
    else:
        from anonymizer.measure.mobilefacenet import free_batch

        model = free_batch(locate("mobilefacenet", args.model_dir).read_bytes())

    def inputs():
        for p in paths:
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            faces = yunet.detect(rgb)
            if faces:
                yield enc.network_input(rgb, enc.align(rgb, [max(faces, key=lambda f: f.w)]))

    return model, inputs()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--network", default="centerface", choices=["centerface", "dlib_resnet", "mobilefacenet"])
    ap.add_argument("--scales", default="1,1.5", help="CenterFace: the scales it runs at")
    ap.add_argument("--limit", type=int, default=200, help="recognizers: images used")
    ap.add_argument("--model-dir")
    args = ap.parse_args()
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    model, inputs = (centerface if args.network == "centerface" else recognizer)(args.data, args)
    name = onnx.load_from_string(model).graph.input[0].name
    count = 0

    class Feeds(CalibrationDataReader):
        def get_next(self):
            nonlocal count
            x = next(inputs, None)
            count += x is not None
            return None if x is None else {name: x}

    out = ranges_file(args.network)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        quantize(prepared(model), Path(tmp) / "int8.onnx", out, Feeds())
    print(f"{out}: ranges from {count} network inputs of {args.data}")


if __name__ == "__main__":
    main()
