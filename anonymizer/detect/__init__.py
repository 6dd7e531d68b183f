"""Detect: find every face, with 5 landmarks where the detector gives them.

Detectors are chosen by name from the policy. Importing this package registers the built-in ones.
"""

from anonymizer.detect.base import DETECTORS, Detector, Ensemble, MultiScale, build_detector, build_ensemble, usable_scales
from anonymizer.detect import centerface, dlib_detectors, haar, mtcnn, retinaface, scrfd, yunet  # noqa: F401  (registration)

__all__ = ["DETECTORS", "Detector", "Ensemble", "MultiScale", "build_detector", "build_ensemble", "usable_scales"]
