"""Anonymize: replace each face region so the person cannot be recognised.

An Anonymizer maps (image, faces with landmarks, one seeded RNG per face) to (image, one mask per face).
Pixels where every mask is 0 must stay byte-identical. The per-face RNG comes from (run seed, image key,
face index), so a re-run reproduces the same output; a generative anonymizer draws its latent from it.
"""

from __future__ import annotations

import hashlib

from typing import Protocol, Sequence

import numpy as np

from anonymizer.faces import Face
from anonymizer.regions import Anonymized
from anonymizer.registry import Registry


class Anonymizer(Protocol):
    name: str

    def anonymize(self, image: np.ndarray, faces: Sequence[Face], rngs: Sequence[np.random.Generator]) -> Anonymized:
        ...


ANONYMIZERS: Registry[Anonymizer] = Registry("anonymizer")


def face_rngs(seed: int, key: str, n: int) -> list[np.random.Generator]:
    """One independent generator per face, fixed by (run seed, image key, face index)."""
    key_int = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return [np.random.default_rng([seed, key_int, i]) for i in range(n)]
