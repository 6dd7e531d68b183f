"""GeneratedFace: replace each face with one the trained generator draws, in the same pose and context.

Per face, the policy decides (`decide`): faces smaller than `min_face_px`, without (finite) landmarks,
whose landmarks a rigid head does not explain (`max_reprojection_error`, in eye distances), or turned
past `max_yaw` / `max_pitch` degrees go to a classical operator (`fallback`, with `fallback_strength`),
recorded as method "fallback:<name>". The others are generated ("generated"):

1. align the face to the model's canonical crop by its 5 landmarks;
2. remove the face region (the crop's hole is set to 0: the generator never sees the face's pixels) and
   add the mask and the landmark heatmaps;
3. draw z from the face's own RNG (fixed by run seed, image key, face index), so the output is
   deterministic for the same (seed, key, index) and differs across seeds;
4. generate, give the face the photo's light and colour (`harmonize`, on by default: the generator learned
   from greyscale LFW), warp the crop back into the image, and blend it through a feathered alpha: the
   crop's face mask warped back, limited to the policy's face region (`regions.face_region` with
   expand/shape/feather). Pixels where that alpha is 0 keep their exact bytes.
5. with `identity_guard` (`guard`), a face recognizer checks each draw against the original, and
   further draws are tried, then the fallback used, for a face it still matches.

Weights: `weights` is a name, resolved as `<dir>/generator/<name>.pt` in `model_dir`, $ANONYMIZER_MODEL_DIR,
~/.cache/anonymizer/models, ../shared/models and the package's own `anonymizer/weights` (in that order),
or a path to a .pt file. The model card `<name>.json` beside it gives the network's configuration and the
weights' sha256, checked on load (written by training/train.py export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from anonymizer.anonymize.base import ANONYMIZERS, Anonymized
from anonymizer.anonymize.generated import align as al
from anonymizer.anonymize.generated import harmonize as hz
from anonymizer.anonymize.generated.networks import Generator
from anonymizer.faces import Face
from anonymizer.headpose import estimate_pose
from anonymizer.regions import FaceMask, blend, face_region
from anonymizer.models import ModelNotFoundError, search_dirs, sha256_file


def resolve_weights(weights: str, model_dir: str | None = None) -> Path:
    p = Path(weights).expanduser()
    if p.suffix == ".pt" or len(p.parts) > 1:
        if p.is_file():
            return p
        raise ModelNotFoundError(f"generator weights not found: {p}")
    looked = [d / "generator" / f"{weights}.pt" for d in search_dirs(model_dir)]
    for candidate in looked:
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"generator weights {weights!r} not found; looked for: {', '.join(str(c) for c in looked)} "
        "(train them with flows/train_generator.py, or set `weights` to a .pt path)")


def load_generator(path: Path, device: str = "cpu") -> tuple[Generator, dict]:
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise ModelNotFoundError(f"model card not found: {card_path} (it gives the network's configuration)")
    card = json.loads(card_path.read_text())
    digest = sha256_file.__wrapped__(str(path))  # not the cached hash: the file is checked as it is now
    if card.get("weights_sha256") and digest != card["weights_sha256"]:
        raise ValueError(f"generator weights {path}: sha256 {digest} differs from its model card's {card['weights_sha256']}")
    net = Generator(**card["network"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.to(device).eval().requires_grad_(False), card


def weights_inventory(weights: str, model_dir: str | None = None) -> dict:
    """What the audit report records of the generator: file, hash, and where its training data came from."""
    path = resolve_weights(weights, model_dir)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return {"component": "generated", "name": card.get("name", path.stem), "file": path.name,
            "sha256": sha256_file(str(path)), "steps": card.get("steps"),
            "licence": "project's own weights; trained on LFW (research data set), see the model card",
            "licence_class": "research"}


class GeneratedFace:
    name = "generated"

    @staticmethod
    def weight_files(params: dict, model_dir: str | None) -> list[dict]:
        """The generator's weights, and the identity guard's recognizer when it has one."""
        from anonymizer.measure.encoder import ENCODERS

        rows = [weights_inventory(params.get("weights", "generator"), model_dir)]
        guard = params.get("identity_guard")
        if guard:
            name = guard.get("encoder", "dlib_resnet")
            rows += [dict(r, component=f"identity_guard:{name}")
                     for r in ENCODERS.factory(name).weight_files(guard.get("encoder_params", {}), model_dir)]
        return rows

    def __init__(self, weights: str = "generator", model_dir: str | None = None, fallback: str = "blur",
                 fallback_strength: float = 0.35, min_face_px: float = 32, max_yaw: float = 60.0,
                 max_pitch: float = 45.0, max_reprojection_error: float = 0.25, expand: float = 1.35,
                 shape: str = "ellipse", feather: float = 0.15, device: str = "auto", batch_size: int = 32,
                 truncation: float = 1.0, harmonize: bool = True, identity_guard: dict | None = None) -> None:
        if fallback == self.name:
            raise ValueError("generated: the fallback must be a classical operator")
        self.weights_path = resolve_weights(weights, model_dir)
        self.device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        self.net, self.card = load_generator(self.weights_path, self.device)
        self.resolution = int(self.card["network"]["resolution"])
        self.batch_size = int(batch_size)
        if not 0.0 <= truncation <= 1.0:
            raise ValueError(f"generated: truncation must be in [0, 1], got {truncation}")
        self.truncation = float(truncation)
        self.fallback_name = fallback
        self.fallback = ANONYMIZERS.create(fallback, strength=fallback_strength, expand=expand, shape=shape,
                                           feather=feather)
        self.min_face_px, self.max_yaw, self.max_pitch = float(min_face_px), float(max_yaw), float(max_pitch)
        self.max_reprojection_error = float(max_reprojection_error)
        self.expand, self.shape, self.feather = expand, shape, feather
        self.guard = None
        if identity_guard is not None:
            from anonymizer.anonymize.generated.guard import IdentityGuard, IdentityGuardConfig

            self.guard = IdentityGuard(IdentityGuardConfig(**identity_guard), model_dir)
        self._hole = al.hole_mask(self.resolution)
        self._alpha = al.face_mask(self.resolution)
        self._inner = hz.inner_face(self.resolution) if harmonize else None

    def decide(self, face: Face, image_shape: tuple[int, int]) -> str | None:
        """Why this face falls back to the classical operator, or None when it can be generated."""
        if face.size < self.min_face_px:
            return "small"
        lm = face.landmarks
        if lm is None or np.asarray(lm).shape != (5, 2) or not np.all(np.isfinite(lm)):
            return "no_landmarks"
        try:
            pose = estimate_pose(lm, image_shape)
        except ValueError:
            return "unreliable_landmarks"
        if pose.reprojection_error > self.max_reprojection_error:
            return "unreliable_landmarks"
        if abs(pose.yaw) > self.max_yaw or abs(pose.pitch) > self.max_pitch:
            return "extreme_pose"
        return None

    def generate_crops(self, crops: list[np.ndarray], landmarks: list[np.ndarray], z: np.ndarray) -> list[np.ndarray]:
        """The generator's composites for aligned uint8 crops, in batches of `batch_size`; row i of `z` is face
        i's latent, so a face's output does not depend on which other faces share its batch."""
        r, out = self.resolution, []
        mask = torch.from_numpy(self._hole)[None, None]
        for i in range(0, len(crops), self.batch_size):
            part = slice(i, i + self.batch_size)
            context = torch.from_numpy(np.stack(crops[part])).permute(0, 3, 1, 2).float() / 127.5 - 1
            hm = torch.from_numpy(np.stack([al.heatmaps(lm, r) for lm in landmarks[part]]))
            zb = torch.from_numpy(np.ascontiguousarray(z[part], np.float32)) * self.truncation  # truncation trick
            m = mask.expand(len(context), -1, -1, -1)
            with torch.inference_mode():
                y = self.net((context * (1 - m)).to(self.device), m.to(self.device), hm.to(self.device), zb.to(self.device))
            y = ((y.float().cpu().permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()
            out += list(np.clip(y, 0, 255).astype(np.uint8))
        return out

    def _blend(self, base: np.ndarray, region: FaceMask, a: al.Aligned, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the region's window of `base` with `gen` warped back and blended in, alpha over that window)."""
        if self._inner is not None:
            gen = hz.harmonize(gen, a.crop, self._inner)
        ys, xs = region.window
        window = region.box
        gen_win = al.warp_back(gen, a.matrix, window).astype(np.float32)
        alpha = np.minimum(al.warp_back(self._alpha, a.matrix, window), region.alpha).astype(np.float32)
        return blend(base[ys, xs], gen_win, alpha), alpha

    def _choose(self, image: np.ndarray, out: np.ndarray, faces: Sequence[Face], todo: list, z: list[np.ndarray]
                ) -> list[np.ndarray | None]:
        """Each face's generated crop: its first latent without a guard; with one, the first of its
        candidates the guard accepts (generated in rounds, batched across the faces still open), else the
        identity-safe one that keeps the pose best, else None (the fallback)."""
        if not todo:
            return []
        if self.guard is None:
            return self.generate_crops([t[2].crop for t in todo], [t[2].landmarks for t in todo], np.stack([zz[0] for zz in z]))
        refs = [self.guard.reference(image, faces[i], region) for i, region, _, _ in todo]
        chosen: list[np.ndarray | None] = [None] * len(todo)
        spare: list[tuple[float, np.ndarray] | None] = [None] * len(todo)  # identity-safe, pose missed
        open_ = list(range(len(todo)))
        for k in range(self.guard.candidates):
            if not open_:
                break
            gens = self.generate_crops([todo[j][2].crop for j in open_], [todo[j][2].landmarks for j in open_],
                                       np.stack([z[j][k] for j in open_]))
            still = []
            for j, gen in zip(open_, gens):
                _, region, a, _ = todo[j]
                x0, y0, x1, y1 = refs[j].window
                patch = out[y0:y1, x0:x1].copy()
                pixels, _ = self._blend(out, region, a, gen)
                ys, xs = region.window
                patch[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = pixels
                v = self.guard.judge(refs[j], patch)
                if v.accepted:
                    chosen[j] = gen
                    continue
                still.append(j)
                err = np.inf if v.pose_error is None else v.pose_error
                if v.identity_ok and (spare[j] is None or err < spare[j][0]):
                    spare[j] = (err, gen)
            open_ = still
        for j in open_:
            chosen[j] = None if spare[j] is None else spare[j][1]
        return chosen

    def anonymize(self, image: np.ndarray, faces: Sequence[Face], rngs: Sequence[np.random.Generator]) -> Anonymized:
        """Fallback faces first; then every generated face is aligned from that image (so no fallback face's
        original pixels are context for another), generated in one batch (per guard round), and blended in
        order. A face the identity guard rejects gets the fallback too ("fallback:<name>:reidentifiable")."""
        out = image.copy()
        masks: list[FaceMask | None] = [None] * len(faces)
        methods = [self.name] * len(faces)
        todo = []
        for i, (face, rng) in enumerate(zip(faces, rngs)):
            if self.decide(face, image.shape[:2]) is not None:
                res = self.fallback.anonymize(out, [face], [rng])
                out, masks[i], methods[i] = res.image, res.masks[0], f"fallback:{self.fallback_name}"
                continue
            region = face_region(face, image.shape[:2], self.expand, self.shape, self.feather)
            if region.alpha.size == 0:
                masks[i] = region
                continue
            todo.append((i, region, al.align(out, face.landmarks, self.resolution), rng))
        # Every candidate's z comes from the face's RNG in order: the first is the unguarded draw.
        z = [rng.standard_normal((self.guard.candidates if self.guard else 1, self.net.z_dim)).astype(np.float32)
             for *_, rng in todo]
        rejected = []
        for (i, region, a, rng), gen in zip(todo, self._choose(image, out, faces, todo, z)):
            if gen is None:
                rejected.append((i, rng))
                continue
            pixels, alpha = self._blend(out, region, a, gen)
            out[region.window] = pixels
            masks[i] = FaceMask(region.x0, region.y0, alpha)
        for i, rng in rejected:
            res = self.fallback.anonymize(out, [faces[i]], [rng])
            out, masks[i], methods[i] = res.image, res.masks[0], f"fallback:{self.fallback_name}:reidentifiable"
        return Anonymized(out, masks, methods)
