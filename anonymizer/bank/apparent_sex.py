"""Apparent sex: whether a face reads as a man's or a woman's, so a bank face can be chosen to read alike.

Why: a bank face chosen by pose and skin tone alone put men's faces on women (and the reverse) in about
half the photos' faces, which no photograph shows (docs/benchmarks.md, "Apparent sex"). The probe is a
logistic regression on dlib's face descriptor (training/apparent_sex.py; labels by looking at LFW photos,
a research data set, hence its licence class): no network of its own, and the descriptor is the one the
identity guard computes of each original anyway. A probability within `undecided` of 1/2 (children, faces
that read as neither) decides nothing: such a face may get any bank person, and such a bank person goes
only on such faces. Only the label steers the choice; neither probability nor label is stored or reported.
"""

from __future__ import annotations

import json
from functools import cached_property

import numpy as np

from anonymizer.faces import Face
from anonymizer.models import locate

MAN, WOMAN = "M", "F"


class ApparentSex:
    MODEL = "apparent_sex"  # anonymizer.models name: the probe's file, for the audit report and licence gate

    def __init__(self, model_dir: str | None = None, encoder=None) -> None:
        from anonymizer.measure.encoder import ENCODERS

        card = json.loads(locate(self.MODEL, model_dir).read_text())
        self.weights = np.asarray(card["weights"], np.float64)
        self.bias = float(card["bias"])
        self.undecided = float(card["undecided"])
        self.recognizer = card["recognizer"]
        self._encoder = encoder if encoder is not None else ENCODERS.create(self.recognizer, model_dir=model_dir)

    def probability(self, descriptor: np.ndarray) -> float:
        """P(the face reads as a woman's) from its dlib descriptor."""
        return float(1.0 / (1.0 + np.exp(-(np.asarray(descriptor, np.float64) @ self.weights + self.bias))))

    def label(self, descriptor: np.ndarray) -> str | None:
        """MAN, WOMAN, or None where the probe is undecided."""
        p = self.probability(descriptor)
        return None if abs(p - 0.5) <= self.undecided else (WOMAN if p > 0.5 else MAN)

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's descriptor, as the probe reads it."""
        return self._encoder.embed(image, self._encoder.align(image, [face]))[0]


class BankPeople:
    """Each bank person's label, read once from their most frontal face (a person's views share it): about
    one descriptor per person when the operator starts."""

    def __init__(self, bank, probe: ApparentSex) -> None:
        from anonymizer.bank.composite import face_for

        ids = bank.index["identity"].to_numpy()
        frontal = np.abs(bank.features[:, :2]).sum(1)
        self.of_person: dict[str, str | None] = {}
        for person in np.unique(ids):
            k = int(np.flatnonzero(ids == person)[np.argmin(frontal[ids == person])])
            crop = bank.crop(k)
            self.of_person[str(person)] = probe.label(probe.describe(crop, face_for(bank.landmarks(k))))
        self._ids = ids

    @cached_property
    def labels(self) -> np.ndarray:
        """Per bank face, its person's label (None: undecided)."""
        return np.array([self.of_person[str(p)] for p in self._ids], dtype=object)

    def allowed(self, label: str | None) -> np.ndarray | None:
        """Per bank face, whether it may go on a face read as `label`: those of people read alike (an
        undecided bank person's result may read as either); None (any) where the face is undecided or the
        bank has nobody read alike."""
        if label is None:
            return None
        ok = self.labels == label
        return ok if ok.any() else None
