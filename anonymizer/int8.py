"""8-bit copies of ONNX networks, for onnxruntime on CPUs.

Why: on a CPU with 8-bit dot products (AVX-512 VNNI, AVX-VNNI, ARM's dotprod) an int8 convolution costs
about half a float32 one. Without them (AVX2 alone, AVX-512 without VNNI) the 8-bit kernels add pairs of
products in 16 bits, which can saturate (OpenVINO's and onnxruntime's quantization guides): on an AVX2-only
CPU the recognizers' descriptors moved by up to 0.34 (dlib) and 0.38 (MobileFaceNet) from float32's, and were
no faster (bench/int8_drift.py, docs/benchmarks.md), so `auto` keeps float32 there. The copy is static QDQ
(onnxruntime.quantization: weights int8 per output channel, activations uint8 per tensor) with activation
ranges measured once on real data (training/calibrate_int8.py) and stored in int8_ranges/ beside this module,
so every machine makes the same copy without calibration data. It is made on first use (a few seconds) and kept under
~/.cache/anonymizer/derived (anonymizer.onnx_runtime.derived), named by a hash of the float32 model, the ranges
and onnxruntime's version.
Used for CenterFace (a detector setting) and for the face bank's identity guard (its recognizers);
docs/benchmarks.md has what each copy changes.
"""

from __future__ import annotations

import platform
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

from anonymizer.onnx_runtime import derived

OPSET = 13  # per-channel QDQ (DequantizeLinear's axis) needs opset 13


def available() -> bool:
    """Whether this onnxruntime's quantizer takes stored ranges (`quantize_static`'s `calibration_cache_path`,
    from 1.32 on). By its version: importing the quantizer takes a second (onnx with it)."""
    import onnxruntime as ort

    major, minor = (int(p) for p in re.findall(r"\d+", ort.__version__)[:2])
    return (major, minor) >= (1, 32)


def ranges_file(name: str) -> Path:
    return Path(__file__).with_name("int8_ranges") / f"{name}.json"


def report_note(name: str) -> str:
    """What the audit report adds to a weight file's row where a run uses its int8 copy: the ranges' hash."""
    from anonymizer.models import sha256_file

    return f" as its int8 copy (ranges sha256 {sha256_file(str(ranges_file(name)))[:16]})"


PRECISIONS = ("float32", "int8", "auto")
_DOT_PRODUCT_FLAGS = {"avx512_vnni", "avx_vnni", "asimddp"}  # /proc/cpuinfo's names (x86-64, aarch64)


@lru_cache(maxsize=1)
def dot_products() -> bool:
    """Whether this CPU has 8-bit dot-product instructions, where int8 kernels do not saturate. Read from
    Linux's /proc/cpuinfo; Apple's arm64 CPUs all have them; anywhere else, no."""
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(_DOT_PRODUCT_FLAGS & set(line.split(":", 1)[1].split())
               for line in text.splitlines() if line.startswith(("flags", "Features")) and ":" in line)


def resolve(precision: str, on_gpu: bool, owner: str) -> str:
    """float32 or int8: what a network set to `precision` runs (`auto`: int8 on a CPU with 8-bit dot products
    where this onnxruntime can make the copy; float32 on other CPUs and on a GPU, where the copy is
    unmeasured)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{owner}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "int8" if not on_gpu and dot_products() and available() else "float32"
    return precision


def prepared(model: bytes) -> bytes:
    """The float32 model as it is quantized and calibrated: at opset 13, with batch norms folded into the
    convolutions (onnxruntime's quantization pre-processing)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = onnx.load_from_string(model)
    if m.opset_import[0].version < OPSET:
        m = version_converter.convert_version(m, OPSET)
    with tempfile.TemporaryDirectory(prefix="anonymizer-int8-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(m, src)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst.read_bytes()


def quantize(model: bytes, out: Path, ranges: Path, reader=None) -> None:
    """Write the int8 copy of `model` (prepared) to `out`, from the ranges in `ranges`; with `reader` (an
    onnxruntime CalibrationDataReader), measure those ranges first and store them there."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="anonymizer-int8-") as tmp:
        src = Path(tmp) / "in.onnx"
        src.write_bytes(model)
        quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibration_cache_path=str(ranges))


def int8_model(model: bytes | Callable[[], bytes], name: str, source: bytes | None = None) -> bytes:
    """The int8 copy of `model` (float32 ONNX bytes, inputs already free-sized) from `name`'s stored ranges.
    `model` may be a function that makes it, called only where the copy is not kept yet; `source` then names
    the copy instead of the model's bytes (what the model is made from, deterministically)."""
    import onnxruntime as ort

    ranges = ranges_file(name)
    if not ranges.is_file():
        raise FileNotFoundError(f"{name}: no int8 calibration ranges at {ranges} (training/calibrate_int8.py)")
    if not available():
        raise RuntimeError(f"{name}: precision int8 needs an onnxruntime whose quantizer takes stored ranges "
                           f"(1.32 has it; this is {ort.__version__}): pip install -U onnxruntime")
    if source is None:
        if callable(model):
            raise TypeError(f"{name}: a model made on demand needs the `source` that names its copy")
        source = model
    return derived(f"{name}-int8", source + ranges.read_bytes() + ort.__version__.encode(),
                   lambda: _quantized(model() if callable(model) else model, ranges))


def _quantized(model: bytes, ranges: Path) -> bytes:
    with tempfile.TemporaryDirectory(prefix="anonymizer-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize(prepared(model), out, ranges)
        return out.read_bytes()
