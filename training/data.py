"""LFW for the generator: split by identity, aligned to the canonical crop, cached outside the repository.

The split is anonymizer.eval.lfw's (by identity name; held-out identities never train). Landmarks come from the project's YuNet at scale 1 (the largest face
whose centre is nearest the frame's centre: LFW centres the named person). Images where YuNet finds no
face are skipped and counted.

The cache is one .npz per (split, holdout, limit, size, template) under `~/.cache/anonymizer/lfw_aligned`
(or `cache_dir`): crops (N×size×size×3 uint8, RGB), landmarks in crop coordinates (N×5×2 float32),
identities and relative file names, and `data_hash`, the sha256 of crops + landmarks (what the model card
records).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np

from anonymizer.anonymize.generated import align as al
from anonymizer.eval.lfw import DEFAULT_HOLDOUT, default_lfw_root, list_images

DEFAULT_CACHE = Path.home() / ".cache" / "anonymizer" / "lfw_aligned"
def pick_face(faces, shape):
    """The largest face, ties broken by closeness to the frame's centre; only faces with landmarks."""
    faces = [f for f in faces if f.landmarks is not None]
    if not faces:
        return None
    h, w = shape[:2]
    return max(faces, key=lambda f: (f.w * f.h) - 0.5 * ((f.x + f.w / 2 - w / 2) ** 2 + (f.y + f.h / 2 - h / 2) ** 2))


def build_cache(root: str | os.PathLike | None = None, split: str = "train", holdout: float = DEFAULT_HOLDOUT,
                limit: int | None = None, size: int = al.CROP_SIZE, cache_dir: str | os.PathLike | None = None,
                model_dir: str | None = None) -> Path:
    """The aligned crops of the split (built once, then reused); returns the .npz path."""
    root = Path(root) if root else default_lfw_root()
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    tag = hashlib.sha256(json.dumps([al.TEMPLATE.tolist(), str(root.resolve())]).encode()).hexdigest()[:8]
    path = cache_dir / f"lfw_{split}_h{int(holdout * 1000)}_n{limit or 'all'}_s{size}_{tag}.npz"
    if path.exists():
        return path
    from anonymizer.detect import build_detector

    detector = build_detector("yunet", {"scales": [1.0]}, model_dir)
    crops, lms, ids, files, skipped = [], [], [], [], 0
    for identity, f in list_images(root, split, holdout, limit):
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            skipped += 1
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        face = pick_face(detector.detect(rgb), rgb.shape)
        if face is None:
            skipped += 1
            continue
        a = al.align(rgb, face.landmarks, size)
        crops.append(a.crop)
        lms.append(a.landmarks)
        ids.append(identity)
        files.append(str(f.relative_to(root)))
    if not crops:
        raise ValueError(f"no usable LFW image in {root} (split {split}, limit {limit})")
    crops_a, lms_a = np.stack(crops), np.stack(lms).astype(np.float32)
    digest = hashlib.sha256(crops_a.tobytes() + lms_a.tobytes()).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, crops=crops_a, landmarks=lms_a, identities=np.array(ids), files=np.array(files),
             data_hash=np.array(digest), skipped=np.array(skipped), split=np.array(split),
             holdout=np.array(holdout), size=np.array(size))
    os.replace(tmp, path)
    return path


def load_cache(path: str | os.PathLike) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def pack_shard(cache_path: str | os.PathLike, out_path: str | os.PathLike, quality: int = 90) -> Path:
    """The cache with its crops as JPEG (~10x smaller): a training shard small enough to travel to a machine
    without ../shared (the lent GPU machine takes 64 MiB per call). `unpack_shard` turns it back into a
    cache; its `data_hash` stays the source cache's, and `jpeg_quality` records the loss."""
    z = load_cache(cache_path)
    blobs = []
    for crop in z["crops"]:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError(f"JPEG encoding failed for a crop of {cache_path}")
        blobs.append(buf.ravel())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    rest = {k: v for k, v in z.items() if k != "crops"}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, jpeg=np.concatenate(blobs), offsets=offsets, jpeg_quality=np.array(int(quality)), **rest)
    os.replace(tmp, out)
    return out


def unpack_shard(shard_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """A shard from `pack_shard` back into a cache that `train` reads."""
    z = load_cache(shard_path)
    jpeg, offsets = z.pop("jpeg"), z.pop("offsets")
    crops = np.stack([cv2.cvtColor(cv2.imdecode(jpeg[a:b], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                      for a, b in zip(offsets[:-1], offsets[1:])])
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, crops=crops, **z)
    os.replace(tmp, out)
    return out
