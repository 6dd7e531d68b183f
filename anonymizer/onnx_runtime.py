"""One way to open an ONNX model in onnxruntime, for every network that runs there (detectors, recognizers),
and one place to keep the models derived from their weight files."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import cv2

from anonymizer.models import USER_MODEL_DIR

DERIVED_DIR = USER_MODEL_DIR.parent / "derived"
_MAKING = threading.Lock()


def derived(name: str, source: bytes, make: Callable[[], bytes], suffix: str = ".onnx") -> bytes:
    """The ONNX model (or other file: `suffix`) `make` derives from `source` (a weight file's bytes, or what
    determines the result), kept under DERIVED_DIR as NAME-<hash of source><suffix> and read from there by
    later processes: editing a graph's input sizes imports onnx (0.7 s of a worker's start), an int8 copy
    takes seconds. `name` stands for how it is made: a changed `make` needs a new name."""
    cached = DERIVED_DIR / f"{name}-{hashlib.sha256(source).hexdigest()[:16]}{suffix}"
    if cached.is_file():
        return cached.read_bytes()
    with _MAKING:  # one at a time in a process: torch's exporter keeps global state, and threads may load
        if cached.is_file():  # their models together
            return cached.read_bytes()
        return _keep(cached, make())


def torch_source(weights: str | os.PathLike) -> bytes:
    """What a graph torch writes from `weights` depends on: the file and torch's version (read without
    importing torch)."""
    return Path(weights).read_bytes() + importlib.metadata.version("torch").encode()


def torch_export(name: str, weights: str | os.PathLike, export: Callable[[], bytes]) -> bytes:
    """The ONNX graph `export` writes with torch from `weights`, written once and kept (`derived`)."""
    return derived(f"{name}-torch-export", torch_source(weights), export)


def _keep(cached: Path, data: bytes) -> bytes:
    try:  # atomically: other processes may make it at the same time
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, cached)
    except OSError:
        pass  # a read-only home: made again next time
    return data


def cuda_runtime(device: str) -> str | None:
    """Which runtime puts a model on a CUDA GPU for this `device` setting: onnxruntime (onnxruntime-gpu), else
    torch with CUDA (`anonymizer.onnx_torch`), else None (the CPU)."""
    if device == "cpu":
        return None
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnxruntime"
    return "torch" if _torch_cuda() else None


def _torch_cuda() -> bool:
    """Whether torch sees a CUDA GPU. torch is imported only where an NVIDIA driver is: the import takes a
    second of a CPU worker's start, which needs no torch."""
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def on_cuda(device: str) -> bool:
    """Whether ort_session puts a model on a CUDA GPU for this `device` setting."""
    return cuda_runtime(device) is not None


def ort_session(model: bytes, device: str, owner: str):
    """An onnxruntime session on CUDA when asked for (`cuda`) or found (`auto`), else on the CPU with as many
    threads as OpenCV was given (a Ray actor's share). Where onnxruntime has no CUDA provider but torch has a
    GPU, the graph runs on torch there instead (same calls). `model` is the (possibly edited) serialized
    graph."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{owner}: device must be auto, cpu or cuda, got {device!r}")
    # ANONYMIZER_ONNX_RUNTIME=torch: on torch even without a GPU (to compare the two runtimes)
    runtime = "torch" if os.environ.get("ANONYMIZER_ONNX_RUNTIME") == "torch" else cuda_runtime(device)
    if device == "cuda" and runtime is None:
        raise RuntimeError(f"{owner}: device cuda asked for, but neither onnxruntime (pip install onnxruntime-gpu) "
                           "nor torch sees a CUDA GPU")
    if runtime == "torch":
        import torch

        from anonymizer.onnx_torch import TorchSession

        return TorchSession(model, "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu", owner)
    cuda = runtime == "onnxruntime"
    providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, cv2.getNumThreads())
    opts.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: between runs this process decodes, warps and runs torch,
    # and a spinning pool takes the cores they need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # exports that list weights as inputs warn once per weight
    if not cuda:
        _share_cpu_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(model, opts, providers=providers)


_ARENA = threading.Lock()
_arena_shared = False


def _share_cpu_arena(ort) -> None:
    """One CPU memory arena for every session of the process. By default each session keeps an arena of its
    own, grown to its largest input and never given back: a worker held the peak of every network at once
    (3.0 GB with the local engine's two threads on the photos), and the kernel spent 7 s zeroing those pages.
    A shared arena holds what runs at once (1.6 GB, 2.5 s; docs/benchmarks.md "Where the time goes")."""
    global _arena_shared
    with _ARENA:
        if not _arena_shared:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # no size limit; it grows by powers of two (onnxruntime's defaults for a session's own arena)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, -1, -1))
            _arena_shared = True


def session_for_backend(make: Callable[[], Any], backend: str, owner: str):
    """For detectors that run on onnxruntime or OpenCV's DNN (`backend`: auto, onnxruntime or opencv): the
    session `make()` builds, or None where OpenCV is asked for, or where onnxruntime is missing and `auto`
    allows falling back to OpenCV."""
    if backend not in ("auto", "onnxruntime", "opencv"):
        raise ValueError(f"{owner}: backend must be auto, onnxruntime or opencv, got {backend!r}")
    if backend == "opencv":
        return None
    try:
        return make()
    except ImportError:
        if backend == "onnxruntime":
            raise ImportError(f"{owner}: backend onnxruntime needs `pip install onnxruntime onnx` "
                              "(onnxruntime-gpu for CUDA)") from None
        return None
