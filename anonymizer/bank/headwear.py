"""Headwear: whether a StyleGAN virtual person wears a hat, cap, scarf or wrap, read from their w before any render.

Why: about one bank person in ten wore one, and a bank head put around a face (`surround: bank`) showed it on
a person who wore none, cut where the face region ends: 3 of the photos' 40-face grid. A build leaves such
people out (anonymizer.bank.stylegan.build_from_stylegan). The probe is a logistic regression on w
(training/headwear.py; labels by looking at renders), so it reads the generator's own latent: it applies to
MobileStyleGAN's people only, and its card names the mapping network it was fitted with. The probe misses some
(a cap, a hood, a band a pose edit brings out), so its card also lists the people of seed 0 labelled as wearing
headwear, and a build leaves those out whatever the probe reads (`labelled`).
"""

from __future__ import annotations

import json

import numpy as np

from anonymizer.models import locate, sha256_file


class Headwear:
    def __init__(self, model_dir: str | None = None, mapping_sha256: str | None = None) -> None:
        path = locate("headwear", model_dir)
        self.sha256 = sha256_file(str(path))
        card = json.loads(path.read_text())
        if mapping_sha256 is not None and card["mapping_network_sha256"] != mapping_sha256:
            raise ValueError(f"{path}: fitted on another mapping network ({card['mapping_network_sha256'][:12]}…) "
                             f"than this one ({mapping_sha256[:12]}…): its readings would mean nothing")
        self.weights = np.asarray(card["weights"], np.float64)
        self.bias, self.threshold = float(card["bias"]), float(card["threshold"])
        seen = card.get("labelled", {})
        self._seed, self._below = seen.get("seed"), int(seen.get("below", 0))
        self._labelled = frozenset(seen.get("headwear", ()))

    def covers(self, w: np.ndarray) -> bool:
        """Whether the person of style vector `w` reads as wearing something on their head."""
        return float(np.asarray(w, np.float64) @ self.weights + self.bias) >= self.threshold

    def labelled(self, seed: int, person: int) -> bool:
        """Whether person `person` of seed `seed`, as rendered before any move to a skin-tone band's centre, was
        seen wearing something on their head by whoever labelled the probe's renders."""
        return seed == self._seed and person < self._below and person in self._labelled
