"""Attackers that learn: a recognizer adapted to an operator's outputs (parrot) and a network that undoes the
operator (restoration), trained on LFW training identities and scored on held-out ones.

A recognizer that never saw an anonymized face says little about an attacker who has: against blur, a
recognizer trained on blurred faces, or deblurring followed by recognition, re-identifies far more than the
off-the-shelf one. This module measures that, per operator; the pipeline never imports it (it trains).

Conventions (fixed, so numbers stay comparable):

* Recognizer: MobileFaceNet (anonymizer.measure.mobilefacenet, onnxruntime), 112x112 chips, cosine; the
  Euclidean distance of L2-normalised embeddings is what the metrics threshold.
* Data: LFW identities split by anonymizer/eval/lfw.py. Attackers train on "train" identities (at most
  `train_images_per_identity` images of each of `train_identities` identities with >= 2 images, evenly
  spaced over the sorted names) and are scored on "eval" identities, which no attacker and no operator saw:
  each eval identity with >= 2 images gives its first image to the gallery and the next ones as probes;
  eval identities with one image join the gallery as distractors (`distractors`). Closed set: every
  probe's identity is in the gallery; rank-1 chance = 1/gallery.
* Face: YuNet (score 0.6, scale 1; on LFW its boxes are within a few pixels of the default ensemble's, at
  1/60 of the time), the face nearest the centre. An image without a face is left out (counted).
* Anonymization: the operator as the pipeline builds it (anonymizer.components.build_operator, the
  policy's region), the per-face RNG face_rngs(policy.seed, key, 1), a JPEG round trip at the policy's
  quality; as in `anonymizer eval reid`.
* Alignment: every chip, original or anonymized, is warped by the similarity transform of the *original's*
  five landmarks onto the ArcFace template: the pipeline check's crop, the most favourable to the attacker
  (a real one estimates it from the visible anonymized region, less precisely): on this count the figures
  favour the attacker; on training budget (minutes of CPU) they do not.
* Attackers:
  - naive: the recognizer as shipped, on the anonymized chip;
  - parrot-trained: MobileFaceNet converted to torch (onnx2torch), cut after bottleneck `cut_after`: the
    trunk stays frozen (its features are computed once), the rest learns on anonymized training chips to
    land on the frozen recognizer's embedding of the same image's original (cosine distillation) and, with
    a CosFace margin, on its own identity's mean embedding rather than another's. Originals keep the frozen
    recognizer: the attacker knows which faces are anonymized, they are visibly so;
  - restoration: a small U-Net trained with L1 to map anonymized chips to original chips at `size` px; its
    correction, upsampled, is added to the 112 px anonymized chip, which the frozen recognizer then embeds;
  - attributes: no recognizer at all. It reads what a face reads as, by the probes the bank operator matches
    on (P(woman) and skin darkness from dlib's descriptor, apparent age in years), on the anonymized face and
    on each gallery face, and names the gallery face nearest in those three (each scaled by its spread over
    the gallery's originals). An operator that keeps sex, skin tone and age keeps this much identity on
    purpose: this attacker's rank-1 is the chance level given what the operator keeps, beside 1/gallery.
* Protocols per attacker: `orig->anon` (gallery of originals, anonymized probes: the threat to a released
  face) and `anon->anon` (gallery anonymized the same way: the attacker anonymizes his own photos).
* Metrics (anonymizer.eval.reid.identification): rank-1; TAR at FAR `far` with the threshold set on the
  protocol's own impostor scores (an attacker who re-calibrates); EER; the rates at the clean threshold
  (FAR `far` on the held-out originals); rank-1 hits and their binomial p-value under guessing (p_chance).
* Seeds: with several policy seeds (`seeds`), every operator runs once per seed (its draws change, the faces
  and attackers' data do not), and `pooled` sums each attacker's hits and probes over the seeds, with the
  binomial p-value of the sum. The same probes recur under each seed, so the pooled test is an approximation;
  it answers what one seed's 175 probes cannot, whether an attacker's 2 or 3 hits are a pattern.
"""

from __future__ import annotations

import json
import sys
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anonymizer.faces import Face

ATTACKERS = ("naive", "parrot-trained", "restoration", "attributes")
LEARNING = ("parrot-trained", "restoration")  # attackers that train on anonymized training faces
PROTOCOLS = ("orig->anon", "anon->anon")


# --- configuration ------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParrotConfig(_Model):
    """The adapted recognizer: which part learns, and how long."""

    cut_after: int = Field(11, ge=0, le=14, description="bottleneck after which MobileFaceNet learns (0-14)")
    epochs: int = Field(4, ge=1)
    batch: int = Field(32, ge=2)
    lr: float = Field(3e-4, gt=0)
    margin_weight: float = Field(1.0, ge=0, description="weight of the CosFace term beside the distillation")
    scale: float = Field(30.0, gt=0)
    margin: float = Field(0.2, ge=0)


class RestorationConfig(_Model):
    """The restoring U-Net: working size, widths per level, training steps."""

    size: int = Field(64, ge=16, description="side in px the U-Net works at (chips are resized to it)")
    widths: tuple[int, ...] = Field((16, 32, 64, 128), min_length=2)
    steps: int = Field(1500, ge=1)
    batch: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)


class AttackConfig(_Model):
    """How much data and training an attacker gets. `tiny` fits CI (seconds); `full` fits a few minutes of
    training per operator and attacker on two CPU cores."""

    name: str
    train_identities: int = Field(ge=2)
    train_images_per_identity: int = Field(4, ge=2)
    eval_identities: int | None = Field(None, ge=2, description="None: every eval identity with >= 2 images")
    eval_images_per_identity: int = Field(3, ge=2)
    distractors: bool = True
    parrot: ParrotConfig = ParrotConfig()
    restoration: RestorationConfig = RestorationConfig()
    seed: int = 0
    threads: int = Field(1, ge=1, description="torch threads (1 is fastest on a shared, busy CPU)")


ATTACK_CONFIGS: dict[str, AttackConfig] = {
    "tiny": AttackConfig(name="tiny", train_identities=80, train_images_per_identity=3, eval_identities=40,
                         distractors=False,
                         parrot=ParrotConfig(cut_after=12, epochs=15, batch=16, lr=5e-4),
                         restoration=RestorationConfig(size=48, widths=(8, 16, 32), steps=400, batch=8, lr=5e-3)),
    "full": AttackConfig(name="full", train_identities=300, train_images_per_identity=4,
                         parrot=ParrotConfig(cut_after=11, epochs=8, batch=32, lr=5e-4),
                         restoration=RestorationConfig(size=64, widths=(8, 16, 32, 64, 128), steps=2000, batch=8,
                                                       lr=3e-3)),
}


def attack_config(name: str) -> AttackConfig:
    if name not in ATTACK_CONFIGS:
        raise ValueError(f"unknown attack config {name!r}; known: {', '.join(ATTACK_CONFIGS)}")
    return ATTACK_CONFIGS[name]


def parse_attackers(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in ATTACKERS]
    if bad or not names:
        raise ValueError(f"unknown attacker(s) {bad or text!r}; known: {', '.join(ATTACKERS)}")
    return names


# --- data ---------------------------------------------------------------------------------------------


@dataclass
class FaceSet:
    """Acquired LFW faces with the chip transform of each original."""

    keys: list[str]
    ids: np.ndarray          # identity per face
    images: list[np.ndarray]  # the 250x250 RGB originals
    faces: list[Face]
    matrices: np.ndarray     # N x 2 x 3: image -> 112x112 chip, from the original's landmarks
    gallery: np.ndarray      # bool per face: the first acquired image of its identity
    not_acquired: list[str]

    def chips(self, images: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """N x 112 x 112 x 3 chips of `images` (default: the originals), by the originals' transforms."""
        imgs = self.images if images is None else images
        out = np.zeros((len(imgs), 112, 112, 3), np.uint8)
        for i, (img, m) in enumerate(zip(imgs, self.matrices)):
            out[i] = cv2.warpAffine(np.ascontiguousarray(img), m, (112, 112), flags=cv2.INTER_LINEAR)
        return out


def _identities(lfw: Path) -> list[tuple[str, int]]:
    table = Path(lfw) / "identities.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"LFW identities table not found: {table}")
    rows = []
    for line in table.read_text().splitlines()[1:]:
        name, n = line.split("\t")
        rows.append((name, int(n)))
    return sorted(rows)


def _spaced(names: list[str], k: int | None) -> list[str]:
    if k is None or k >= len(names):
        return names
    step = len(names) / k
    return [names[int(i * step)] for i in range(k)]


def select(lfw: Path, split: str, identities: int | None, per_identity: int,
           distractors: bool = False) -> list[tuple[str, str, Path, bool]]:
    """(identity, key, path, gallery) for `split`'s identities with >= 2 images; the first image of each is
    its gallery image. `distractors`: the split's one-image identities, as gallery-only entries."""
    from anonymizer.eval.lfw import split_of

    rows = [(n, c) for n, c in _identities(lfw) if split_of(n) == split]
    multi = _spaced([n for n, c in rows if c >= 2], identities)
    out = []
    for name in multi:
        files = sorted((Path(lfw) / "images" / name).glob("*.jpg"))[:per_identity]
        out += [(name, f"{name}/{f.name}", f, i == 0) for i, f in enumerate(files)]
    if distractors:
        for name in (n for n, c in rows if c == 1):
            f = sorted((Path(lfw) / "images" / name).glob("*.jpg"))[0]
            out.append((name, f"{name}/{f.name}", f, True))
    return out


def load_faces(rows: Sequence[tuple[str, str, Path, bool]], detector, cache: Path | None = None,
               log: Callable | None = print) -> FaceSet:
    """Detect and align every row's face (boxes and landmarks cached as numbers in `cache`, never pixels).
    An identity left without a gallery image or (when it has probes listed) without a probe is dropped."""
    from anonymizer.eval.reid import _read_rgb, central_face
    from anonymizer.measure.encoder import FivePointAligner

    cached = json.loads(Path(cache).read_text()) if cache is not None and Path(cache).is_file() else {}
    aligner = FivePointAligner(112)
    kept, missing = [], []
    for identity, key, path, gallery in rows:
        rgb = _read_rgb(path)
        if key not in cached:
            f = central_face(detector.detect(rgb), rgb.shape[:2])
            cached[key] = None if f is None or f.landmarks is None else {
                "box": [float(f.x), float(f.y), float(f.w), float(f.h)], "score": float(f.score),
                "landmarks": np.asarray(f.landmarks, float).tolist()}
        e = cached[key]
        if e is None:
            missing.append(key)
            continue
        face = Face(*e["box"], e["score"], "yunet", np.array(e["landmarks"], np.float32))
        kept.append((identity, key, rgb, face, aligner(rgb, [face])[0], gallery))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(cached))
    # The first acquired image of an identity is its gallery image; an identity listed with probes needs one.
    listed: dict[str, int] = {}
    for identity, *_ in rows:
        listed[identity] = listed.get(identity, 0) + 1
    got: dict[str, int] = {}
    for k in kept:
        got[k[0]] = got.get(k[0], 0) + 1
    kept = [k for k in kept if listed[k[0]] == 1 or got[k[0]] >= 2]
    seen: set[str] = set()
    gallery = []
    for k in kept:
        gallery.append(k[0] not in seen)
        seen.add(k[0])
    if log and missing:
        log(f"{len(missing)} of {len(rows)} LFW images without a face, left out")
    return FaceSet([k[1] for k in kept], np.array([k[0] for k in kept]), [k[2] for k in kept],
                   [k[3] for k in kept], np.array([k[4] for k in kept], np.float64).reshape(-1, 2, 3),
                   np.array(gallery, bool), missing)


def anonymize(faces: FaceSet, operator, policy) -> list[np.ndarray]:
    """The operator on every original (per-face RNG, JPEG round trip): the released images."""
    from anonymizer.anonymize import face_rngs
    from anonymizer.eval.reid import _jpeg

    out = []
    for key, rgb, face in zip(faces.keys, faces.images, faces.faces):
        img = operator.anonymize(rgb, [face], face_rngs(policy.seed, key, 1)).image
        out.append(_jpeg(img, policy.output.jpeg_quality))
    return out


# --- attributes: what a face reads as -----------------------------------------------------------------


class AttributeReader:
    """P(woman), skin darkness and apparent age of a face, read by the probes and the age reader the bank operator
    matches on (anonymizer.bank.apparent_sex, anonymizer.bank.tone, anonymizer.measure.apparent_age)."""

    NAMES = ("p_woman", "darkness", "age")

    def __init__(self, model_dir: str | None) -> None:
        from anonymizer.bank.apparent_sex import ApparentSex
        from anonymizer.bank.tone import SkinTone
        from anonymizer.measure.apparent_age import AgeReader
        from anonymizer.measure.encoder import ENCODERS

        encoder = ENCODERS.create("dlib_resnet", model_dir=model_dir)  # one descriptor a face for both probes
        self.sex, self.tone = ApparentSex(model_dir, encoder), SkinTone(model_dir, encoder)
        for probe in (self.sex, self.tone):
            if probe.recognizer != "dlib_resnet":
                raise ValueError(f"attributes: the {probe.MODEL} probe reads {probe.recognizer!r}, not dlib_resnet")
        self.age = AgeReader(model_dir)

    def read(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """N x 3: each image's face, read."""
        out = np.zeros((len(images), len(self.NAMES)), np.float64)
        for i, (img, face) in enumerate(zip(images, faces)):
            d = self.sex.describe(img, face)
            out[i] = (self.sex.probability(d), self.tone.darkness(d), self.age.read(img, [face])[0])
        return out


# --- the recognizer in two parts ----------------------------------------------------------------------


def _onnx2torch():
    """onnx2torch, imported. Its NMS and RoiAlign converters import torchvision at package import;
    MobileFaceNet uses neither, and a CPU-only torch has no matching torchvision wheel on PyPI. Where
    torchvision cannot be imported, a placeholder that fails on use stands in during the import only."""
    try:
        import onnx2torch
        return onnx2torch
    except ImportError as exc:
        if "onnx2torch" in str(exc):
            raise ImportError("the parrot attacker needs onnx2torch: pip install 'anonymizer[attacks]'") from exc
    except RuntimeError:  # a torchvision built for another torch fails at import with RuntimeError
        pass
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "torchvision" or k.startswith("torchvision.")}
    saved.update({k: sys.modules.pop(k) for k in list(sys.modules) if k.startswith("onnx2torch")})

    def unavailable(*_a, **_k):
        raise RuntimeError("torchvision is not installed: this ONNX operator cannot be converted")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable
    tv.ops = ops
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        import onnx2torch
    finally:
        for k in ("torchvision", "torchvision.ops"):
            sys.modules.pop(k, None)
    return onnx2torch


def _block_output(model, k: int) -> str:
    """The tensor that bottleneck k of MobileFaceNet outputs (its residual sum where it has one)."""
    outputs = {o for n in model.graph.node for o in n.output}
    for name in (f"/features/features.{k}/Add_output_0", f"/features/features.{k}/conv/conv.2/Conv_output_0"):
        if name in outputs:
            return name
    raise ValueError(f"mobilefacenet: no output tensor for bottleneck {k} in the ONNX graph")


def _free_batch(model) -> None:
    """Any batch size: the export fixes N = 1 on its inputs, outputs and inferred shapes."""
    del model.graph.value_info[:]
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "N"


class SplitMobileFaceNet:
    """MobileFaceNet cut after bottleneck `cut_after`: a frozen trunk run by onnxruntime and a torch tail
    (onnx2torch) that an attacker trains. tail(trunk(x)), normalised, equals the shipped encoder's output."""

    def __init__(self, model_dir: str | None, cut_after: int) -> None:
        import onnx
        import onnx.utils
        import onnxruntime as ort

        from anonymizer.models import locate

        model = onnx.shape_inference.infer_shapes(onnx.load(str(locate("mobilefacenet", model_dir))))
        self.cut = _block_output(model, cut_after)
        ext = onnx.utils.Extractor(model)
        trunk = ext.extract_model([model.graph.input[0].name], [self.cut])
        tail = ext.extract_model([self.cut], [model.graph.output[0].name])
        _free_batch(trunk)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, cv2.getNumThreads())
        self._trunk = ort.InferenceSession(trunk.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self._input = self._trunk.get_inputs()[0].name
        self.tail_graph = _onnx2torch().convert(tail)

    def features(self, chips: np.ndarray, batch: int = 64) -> np.ndarray:
        """The frozen trunk's features of N x 112 x 112 x 3 RGB chips (float32)."""
        from anonymizer.measure.mobilefacenet import preprocess

        out = [self._trunk.run(None, {self._input: preprocess(chips[i:i + batch])})[0]
               for i in range(0, len(chips), batch)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def tail(self):
        """A fresh trainable copy of the tail: features -> N x 128 (not normalised)."""
        import copy

        import torch

        graph = copy.deepcopy(self.tail_graph)

        class Tail(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.graph = graph

            def forward(self, x):  # the export flattens to (1, -1): restore the batch dimension
                return self.graph(x).reshape(x.shape[0], -1)

        return Tail()


# --- parrot: the recognizer adapted to the operator ---------------------------------------------------


@contextmanager
def _torch(cfg: AttackConfig):
    """torch seeded, on `cfg.threads` threads for the block (the caller's thread count comes back after)."""
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    try:
        yield torch
    finally:
        torch.set_num_threads(threads)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def train_parrot(split: SplitMobileFaceNet, feats: np.ndarray, targets: np.ndarray, ids: np.ndarray,
                 cfg: AttackConfig, log: Callable | None = print):
    """The tail trained on anonymized training features: cosine distillation towards the frozen recognizer's
    embedding of each image's original, plus CosFace against per-identity mean embeddings (fixed)."""
    with _torch(cfg):
        return _train_parrot(split, feats, targets, ids, cfg, log)


def _train_parrot(split, feats, targets, ids, cfg: AttackConfig, log):
    import torch

    p = cfg.parrot
    names, y = np.unique(ids, return_inverse=True)
    protos = _unit(np.stack([targets[y == i].mean(0) for i in range(len(names))]))
    tail = split.tail()
    tail.train()
    opt = torch.optim.Adam(tail.parameters(), lr=p.lr)
    x_all, t_all = torch.from_numpy(feats), torch.from_numpy(_unit(targets).astype(np.float32))
    y_all, protos_t = torch.from_numpy(y), torch.from_numpy(protos.astype(np.float32))
    rng = np.random.default_rng(cfg.seed)
    t0, losses = time.perf_counter(), []
    for epoch in range(p.epochs):
        order = rng.permutation(len(feats))
        for i in range(0, len(order), p.batch):
            idx = torch.from_numpy(order[i:i + p.batch])
            s = torch.nn.functional.normalize(tail(x_all[idx]), dim=1)
            loss = (1 - (s * t_all[idx]).sum(1)).mean()
            if p.margin_weight > 0:
                cos = s @ protos_t.T
                cos = cos - p.margin * torch.nn.functional.one_hot(y_all[idx], len(names))
                loss = loss + p.margin_weight * torch.nn.functional.cross_entropy(p.scale * cos, y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if log:
            log(f"  parrot epoch {epoch + 1}/{p.epochs}: loss {np.mean(losses[-max(1, len(order) // p.batch):]):.4f}"
                f" ({time.perf_counter() - t0:.0f} s)")
    tail.eval()
    return tail, {"seconds": time.perf_counter() - t0, "steps": len(losses), "samples": int(len(feats)),
                  "identities": int(len(names)), "loss_first": losses[0], "loss_last": float(np.mean(losses[-5:]))}


def parrot_embed(tail, feats: np.ndarray, batch: int = 128) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = [tail(torch.from_numpy(feats[i:i + batch])).numpy() for i in range(0, len(feats), batch)]
    return _unit(np.concatenate(out).astype(np.float32))


# --- restoration: a network that undoes the operator --------------------------------------------------


def unet(widths: Sequence[int]):
    """A small U-Net (average-pool down, bilinear up, skip concatenation) predicting a correction of its
    input, so that it starts as the identity."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1))

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.ModuleList([block(3 if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
            self.up = nn.ModuleList([block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1)])
            self.out = nn.Conv2d(widths[0], 3, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def forward(self, x):
            skips, h = [], x
            for i, b in enumerate(self.down):
                h = b(h if i == 0 else nn.functional.avg_pool2d(h, 2))
                skips.append(h)
            for i in reversed(range(len(self.up))):
                h = nn.functional.interpolate(h, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
                h = self.up[i](torch.cat([h, skips[i]], 1))
            return self.out(h)

    return UNet()


def _resize(chips: np.ndarray, size: int) -> np.ndarray:
    """N x H x W x 3 uint8 -> N x 3 x size x size float32 in [0, 1]."""
    out = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in chips]) if len(chips) else \
        np.zeros((0, size, size, 3), np.uint8)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), np.float32) / 255.0


def train_restoration(anon: np.ndarray, orig: np.ndarray, cfg: AttackConfig, log: Callable | None = print):
    """The U-Net trained with L1 on (anonymized, original) training chips at `size` px, random flips."""
    with _torch(cfg):
        return _train_restoration(anon, orig, cfg, log)


def _train_restoration(anon, orig, cfg: AttackConfig, log):
    import torch

    r = cfg.restoration
    net = unet(r.widths)
    opt = torch.optim.Adam(net.parameters(), lr=r.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, r.steps)
    x_all, y_all = torch.from_numpy(_resize(anon, r.size)), torch.from_numpy(_resize(orig, r.size))
    rng = np.random.default_rng(cfg.seed)
    t0, losses = time.perf_counter(), []
    for step in range(r.steps):
        idx = torch.from_numpy(rng.integers(0, len(x_all), r.batch))
        x, y = x_all[idx], y_all[idx]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = (x + net(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % max(1, r.steps // 5) == 0:
            log(f"  restoration step {step + 1}/{r.steps}: L1 {np.mean(losses[-50:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    params = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        before = float((x_all - y_all).abs().mean())
    return net, {"seconds": time.perf_counter() - t0, "steps": r.steps, "samples": int(len(anon)), "params": int(params),
                 "l1_identity": before, "l1_first": losses[0], "l1_last": float(np.mean(losses[-20:]))}


def restore(net, anon: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    """The U-Net's correction at `size` px, upsampled and added to the 112 px anonymized chips."""
    import torch

    out = np.empty_like(anon)
    with torch.no_grad():
        for i in range(0, len(anon), batch):
            x = torch.from_numpy(_resize(anon[i:i + batch], size))
            corr = net(x).numpy().transpose(0, 2, 3, 1) * 255.0
            for j, c in enumerate(corr):
                up = cv2.resize(c, (anon.shape[2], anon.shape[1]), interpolation=cv2.INTER_LINEAR)
                out[i + j] = np.clip(anon[i + j].astype(np.float32) + up, 0, 255).astype(np.uint8)
    return out


# --- scoring ------------------------------------------------------------------------------------------


def p_chance(hits: int, probes: int, gallery: int) -> float:
    """P(at least `hits` rank-1 hits among `probes` by guessing among `gallery` identities): the binomial
    tail. Above 0.01, the attacker's rank-1 is consistent with chance."""
    import math

    p = 1.0 / max(1, gallery)
    below = sum(math.comb(probes, k) * p ** k * (1 - p) ** (probes - k) for k in range(max(0, hits)))
    return float(min(1.0, max(0.0, 1.0 - below)))


def score(gallery: np.ndarray, probes: np.ndarray, ev: FaceSet, far: float, clean_threshold: float | None) -> dict:
    """Rank-1, TAR at FAR (own impostors), EER; gallery = ev.gallery rows of `gallery`, probes = the rest."""
    from anonymizer.eval.reid import identification

    g = ev.gallery
    out, _, _ = identification(gallery[g], ev.ids[g], probes[~g], ev.ids[~g], far, clean_threshold)
    keep = ("rank1", "tar_at_far", "eer", "threshold_at_far", "tar_at_calibrated", "fmr_at_calibrated",
            "genuine_median", "impostor_median", "gallery", "probes", "genuine", "impostor")
    out = {k: out[k] for k in keep}
    out["chance"] = 1.0 / max(1, out["gallery"])
    out["hits"] = int(round(out["rank1"] * out["probes"]))
    out["p_chance"] = p_chance(out["hits"], out["probes"], out["gallery"])
    return out


def _protocols(gal_orig: np.ndarray, anon_g: np.ndarray, anon_p: np.ndarray, ev: FaceSet, far: float, t: float | None) -> dict:
    """orig->anon: gallery originals vs anonymized probes; anon->anon: both anonymized."""
    return {"orig->anon": score(gal_orig, anon_p, ev, far, t), "anon->anon": score(anon_g, anon_p, ev, far, t)}


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything that does not depend on the operator: faces, chips, the recognizer's embeddings."""

    train: FaceSet
    eval: FaceSet
    train_chips: np.ndarray
    eval_chips: np.ndarray
    train_emb: np.ndarray
    eval_emb: np.ndarray
    clean: dict
    clean_threshold: float
    reader: AttributeReader | None = None  # loaded, and the eval originals read, once an attacker asks
    readings: np.ndarray | None = None

    def attribute_reader(self, model_dir: str | None) -> AttributeReader:
        if self.reader is None:
            self.reader = AttributeReader(model_dir)
            self.readings = self.reader.read(self.eval.images, self.eval.faces)
        return self.reader


def prepare(policy, lfw: Path, cfg: AttackConfig, encoder=None, far: float = 1e-3, cache: Path | None = None,
            log: Callable | None = print) -> Prepared:
    from anonymizer.eval.reid import distances, fta_detector, threshold_at_far
    from anonymizer.measure.mobilefacenet import MobileFaceNetEncoder

    lfw = Path(lfw)
    encoder = encoder or MobileFaceNetEncoder(policy.model_dir)
    det = fta_detector(policy)
    t0 = time.perf_counter()
    train = load_faces(select(lfw, "train", cfg.train_identities, cfg.train_images_per_identity), det, cache, log)
    ev = load_faces(select(lfw, "eval", cfg.eval_identities, cfg.eval_images_per_identity, cfg.distractors),
                    det, cache, log)
    tc, ec = train.chips(), ev.chips()
    te, ee = encoder.embed_chips(tc), encoder.embed_chips(ec)
    g = ev.gallery
    d = distances(ee[~g], ee[g])
    impostor = d[ev.ids[~g][:, None] != ev.ids[g][None, :]]
    t = threshold_at_far(impostor, far)
    clean = score(ee, ee, ev, far, t)
    if log:
        log(f"data: {len(train.keys)} training faces ({len(np.unique(train.ids))} identities), {int(g.sum())} gallery / "
            f"{int((~g).sum())} probes held out; clean rank-1 {clean['rank1']:.3f} ({time.perf_counter() - t0:.0f} s)")
    return Prepared(train, ev, tc, ec, te, ee, clean, t)


def attack_operator(prep: Prepared, operator_name: str, strength: float, policy, attackers: Sequence[str],
                    cfg: AttackConfig, encoder, split: SplitMobileFaceNet | None, far: float = 1e-3,
                    log: Callable | None = print) -> dict:
    """One operator at one strength against every attacker in `attackers`."""
    from anonymizer.components import build_operator

    t0 = time.perf_counter()
    op = build_operator(policy, operator_name, strength)
    anon_train = prep.train.chips(anonymize(prep.train, op, policy)) if set(attackers) & set(LEARNING) else None
    released = anonymize(prep.eval, op, policy)
    anon_eval = prep.eval.chips(released)
    seconds_anonymize = time.perf_counter() - t0
    t, ev = prep.clean_threshold, prep.eval
    out: dict = {"operator": operator_name, "strength": strength if operator_name != "generated" else None,
                 "seconds_anonymize": seconds_anonymize, "attackers": {}}
    for name in attackers:
        t1 = time.perf_counter()
        gallery, threshold = prep.eval_emb, t
        if name == "naive":
            e = encoder.embed_chips(anon_eval)
            res: dict = {"training": None}
        elif name == "parrot-trained":
            if split is None:
                raise ValueError("parrot-trained needs the split recognizer")
            tail, info = train_parrot(split, split.features(anon_train), prep.train_emb, prep.train.ids, cfg, log)
            e = parrot_embed(tail, split.features(anon_eval))
            res = {"training": info}
        elif name == "restoration":
            net, info = train_restoration(anon_train, prep.train_chips, cfg, log)
            restored = restore(net, anon_eval, cfg.restoration.size)
            info["l1_eval_before"] = float(np.abs(anon_eval.astype(np.float32) - prep.eval_chips).mean() / 255)
            info["l1_eval_after"] = float(np.abs(restored.astype(np.float32) - prep.eval_chips).mean() / 255)
            e = encoder.embed_chips(restored)
            res = {"training": info}
        elif name == "attributes":
            reader = prep.attribute_reader(policy.model_dir)
            spread = np.maximum(prep.readings[ev.gallery].std(0), 1e-6)
            e = reader.read(released, ev.faces) / spread
            gallery, threshold = prep.readings / spread, None  # no recognizer: no calibrated threshold
            res = {"training": None, "read": list(AttributeReader.NAMES), "spread": spread.tolist(),
                   "clean": score(gallery, gallery, ev, far, threshold)}  # the unaltered photos' attributes
        else:
            raise ValueError(f"unknown attacker {name!r}; known: {', '.join(ATTACKERS)}")
        res.update(_protocols(gallery, e, e, ev, far, threshold))
        res["seconds"] = time.perf_counter() - t1
        out["attackers"][name] = res
        if log:
            o = res["orig->anon"]
            log(f"{operator_name} {strength:g} {name}: rank-1 {o['rank1']:.3f} TAR@FAR {o['tar_at_far']:.3f} "
                f"(anon->anon {res['anon->anon']['rank1']:.3f}) ({res['seconds']:.0f} s)")
    return out


def pooled(configs: list[dict]) -> list[dict]:
    """Per (operator, strength) run under several seeds: each attacker's hits and probes summed over them, per
    protocol, with the binomial p-value of the sum (p_chance)."""
    out: dict[tuple, dict] = {}
    for c in configs:
        row = out.setdefault((c["operator"], c["strength"]), {"operator": c["operator"], "strength": c["strength"],
                                                              "seeds": [], "attackers": {}})
        row["seeds"].append(c["seed"])
        for name, res in c["attackers"].items():
            for protocol in PROTOCOLS:
                m = res[protocol]
                cell = row["attackers"].setdefault(name, {}).setdefault(
                    protocol, {"hits": 0, "probes": 0, "gallery": m["gallery"]})
                cell["hits"] += m["hits"]
                cell["probes"] += m["probes"]
    for row in out.values():
        for cells in row["attackers"].values():
            for cell in cells.values():
                cell["p_chance"] = p_chance(cell["hits"], cell["probes"], cell["gallery"])
    return list(out.values())


def run_attacks(policy, lfw: Path, sweep: Sequence[tuple[str, float]], attackers: Sequence[str], cfg: AttackConfig,
                far: float = 1e-3, cache: Path | None = None, log: Callable | None = print,
                seeds: Sequence[int] | None = None) -> dict:
    """Every (operator, strength) of `sweep` against every attacker, once per seed of `seeds` (default: the
    policy's). Returns the JSON-able result."""
    from anonymizer.measure.mobilefacenet import MobileFaceNetEncoder

    t0 = time.perf_counter()
    encoder = MobileFaceNetEncoder(policy.model_dir)
    prep = prepare(policy, lfw, cfg, encoder, far, cache, log)
    split = SplitMobileFaceNet(policy.model_dir, cfg.parrot.cut_after) if "parrot-trained" in attackers else None
    seeds = list(seeds or [policy.seed])
    configs = [dict(attack_operator(prep, op, s, policy.model_copy(update={"seed": seed}), attackers, cfg, encoder,
                                    split, far, log), seed=seed)
               for seed in seeds for op, s in sweep]
    ev = prep.eval
    return {
        "recognizer": "mobilefacenet",
        "config": cfg.model_dump(mode="json"),
        "dataset": {"name": "LFW", "path": str(lfw), "train_faces": len(prep.train.keys),
                    "train_identities": int(len(np.unique(prep.train.ids))),
                    "eval_identities": int(len(np.unique(ev.ids[~ev.gallery]))),
                    "gallery": int(ev.gallery.sum()), "probes": int((~ev.gallery).sum()),
                    "without_face": prep.train.not_acquired + ev.not_acquired},
        "policy": {"name": policy.name, "sha256": policy.sha256, "seed": policy.seed, "seeds": seeds,
                   "region": policy.anonymization.region.model_dump(), "jpeg_quality": policy.output.jpeg_quality},
        "far": far, "clean_threshold": prep.clean_threshold, "clean": prep.clean,
        "configs": configs, "pooled": pooled(configs) if len(seeds) > 1 else None,
        "seconds": time.perf_counter() - t0,
    }


def markdown_table(result: dict, protocol: str = "orig->anon") -> str:
    """operator x attacker for one protocol: rank-1 (hits in brackets), TAR@FAR and EER; the last column
    names the attackers whose rank-1 is above chance (binomial p < 0.01). Under several seeds, a row per seed and
    one per operator pooled over them (hits of all probes)."""
    attackers = [a for a in ATTACKERS if any(a in c["attackers"] for c in result["configs"])]
    head = ["operator", "strength"] + [f"{a} {m}" for a in attackers for m in ("rank-1", "TAR@FAR", "EER")] + ["above chance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean = {a: next((c["attackers"][a].get("clean") for c in result["configs"] if a in c["attackers"]), None)
             or result["clean"] for a in attackers}  # the recognizer's on the originals; attributes' their own
    lines.append("| none (clean) | - | " + " | ".join(
        f"{clean[a]['rank1']:.3f} | {clean[a]['tar_at_far']:.3f} | {clean[a]['eer']:.3f}" for a in attackers) + " | - |")
    several = len(result["policy"].get("seeds") or [0]) > 1
    for cfgr in result["configs"]:
        s = "-" if cfgr["strength"] is None else f"{cfgr['strength']:g}"
        s += f" (seed {cfgr['seed']})" if several else ""
        cells, above = [], []
        for a in attackers:
            r = cfgr["attackers"].get(a)
            if r is None:
                cells.append("n/a | n/a | n/a")
                continue
            m = r[protocol]
            hits = int(round(m["rank1"] * m["probes"]))
            cells.append(f"{m['rank1']:.3f} ({hits}) | {m['tar_at_far']:.3f} | {m['eer']:.3f}")
            if p_chance(hits, m["probes"], m["gallery"]) < 0.01:
                above.append(a)
        lines.append(f"| {cfgr['operator']} | {s} | " + " | ".join(cells) + f" | {', '.join(above) or 'none'} |")
    for row in result.get("pooled") or []:
        s = "-" if row["strength"] is None else f"{row['strength']:g}"
        cells, above = [], []
        for a in attackers:
            m = row["attackers"].get(a, {}).get(protocol)
            cells.append("n/a | n/a | n/a" if m is None else
                         f"{m['hits'] / max(1, m['probes']):.3f} ({m['hits']} of {m['probes']}) | – | –")
            if m is not None and m["p_chance"] < 0.01:
                above.append(a)
        seeds = ", ".join(map(str, row["seeds"]))
        lines.append(f"| {row['operator']} | {s} (seeds {seeds} pooled) | " + " | ".join(cells)
                     + f" | {', '.join(above) or 'none'} |")
    return "\n".join(lines)


def add_arguments(p) -> None:
    """`anonymizer eval attackers`: the re-identification evaluation's options, plus the attackers'."""
    from anonymizer.eval import reid

    reid.add_arguments(p)
    p.add_argument("--attackers", default="naive,parrot-trained,restoration",
                   help="the attackers, from 'naive,parrot-trained,restoration,attributes' "
                        "(MobileFaceNet; trained on LFW training identities, scored on held-out ones; attributes: "
                        "apparent sex, skin tone and age alone; anonymizer/eval/attackers.py; writes attackers.json)")
    p.add_argument("--attack-config", choices=("tiny", "full"), default="full",
                   help="data and training budget of the attackers that learn (tiny: seconds, for tests)")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="policy seeds to run each operator under, e.g. 0,1,2, with each attacker's hits pooled over "
                        "them (default: the policy's seed)")


def run(args) -> int:
    from anonymizer.eval.reid import policy_and_sweep

    return run_cli(args, *policy_and_sweep(args))


def run_cli(args, policy, sweep: Sequence[tuple[str, float]]) -> int:
    """Writes attackers.json in --out and prints the table."""
    cfg = attack_config(args.attack_config)
    attackers = parse_attackers(args.attackers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_attacks(policy, Path(args.lfw), sweep, attackers, cfg, args.far, cache=out / "attack_faces.json",
                         seeds=args.seeds)
    path = out / "attackers.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    for protocol in PROTOCOLS:
        print(f"\n{protocol}\n" + markdown_table(result, protocol))
    print(json.dumps({"json": str(path), "gallery": result["dataset"]["gallery"],
                      "chance": 1 / max(1, result["dataset"]["gallery"])}, indent=2))
    return 0
