"""One way to open a TFLite model (MediaPipe's networks: face mesh, selfie segmenter, palm and hand)."""

from __future__ import annotations


def tflite_interpreter(path: str, what: str):
    """An interpreter for the TFLite file at `path`, on as many threads as OpenCV uses (`what` names the model in
    errors)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ImportError(f"{what} needs a TFLite runtime: pip install 'anonymizer[mesh]' (ai-edge-litert)") from None
    import cv2

    it = Interpreter(model_path=path, num_threads=max(1, cv2.getNumThreads()))
    it.allocate_tensors()
    return it
