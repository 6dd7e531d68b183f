"""Anonymize: replace each face region so the person cannot be recognised.

An Anonymizer maps (image, faces with landmarks, one seeded RNG per face) to (image, one mask per face).
Pixels where every mask is 0 must stay byte-identical. The per-face RNG comes from (run seed, image key,
face index), so a re-run reproduces the same output; a generative anonymizer draws its latent from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from anonymizer.faces import Face
from anonymizer.registry import Registry


@dataclass
class FaceMask:
    """Alpha in [0, 1] over the image window starting at (x0, y0); 0 outside it."""

    x0: int
    y0: int
    alpha: np.ndarray  # float32, h×w

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.alpha.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)


@dataclass
class Anonymized:
    image: np.ndarray
    masks: list[FaceMask]
    methods: list[str] = field(default_factory=list)  # the operator each face got (fallbacks differ)


class Anonymizer(Protocol):
    name: str

    def anonymize(self, image: np.ndarray, faces: Sequence[Face], rngs: Sequence[np.random.Generator]) -> Anonymized:
        ...


ANONYMIZERS: Registry[Anonymizer] = Registry("anonymizer")


def face_rngs(seed: int, key: str, n: int) -> list[np.random.Generator]:
    """One independent generator per face, fixed by (run seed, image key, face index)."""
    key_int = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return [np.random.default_rng([seed, key_int, i]) for i in range(n)]


def union_mask(masks: Sequence[FaceMask], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for m in masks:
        ys, xs = m.window
        np.maximum(out[ys, xs], m.alpha, out=out[ys, xs])
    return out


from anonymizer.anonymize import classical  # noqa: E402,F401  (registration)


@ANONYMIZERS.register("generated")
def _generated(**params) -> Anonymizer:
    # Imported on demand: torch and the generator load only when a policy asks for them.
    from anonymizer.generate.anonymizer import GeneratedFace

    return GeneratedFace(**params)
