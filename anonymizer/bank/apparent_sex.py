"""Apparent sex: whether a face reads as a man's or a woman's, so a bank face can be chosen to read alike.

Why: a bank face chosen by pose and skin tone alone put men's faces on women (and the reverse) in about
half the photos' faces, which no photograph shows (docs/benchmarks.md, "Apparent sex"). The probe is a
logistic regression on dlib's face descriptor (training/apparent_sex.py; labels by looking at LFW photos,
a research data set, hence its licence class): no network of its own, and the descriptor is the one the
identity guard computes of each original anyway. A probability within `undecided` of 1/2 (children, faces
that read as neither) decides nothing: such a face may get any bank person, and such a bank person goes
only on such faces. A photo face's label only steers the choice: it is neither stored nor reported.
"""

from __future__ import annotations

import json

import numpy as np

from anonymizer.faces import Face
from anonymizer.models import locate, sha256_file

MAN, WOMAN = "M", "F"


class ApparentSex:
    MODEL = "apparent_sex"  # anonymizer.models name: the probe's file, for the audit report and licence gate

    def __init__(self, model_dir: str | None = None, encoder=None) -> None:
        path = locate(self.MODEL, model_dir)
        self.sha256 = sha256_file(str(path))
        card = json.loads(path.read_text())
        self.weights = np.asarray(card["weights"], np.float64)
        self.bias = float(card["bias"])
        self.undecided = float(card["undecided"])
        self.recognizer = card["recognizer"]
        self._encoder, self._model_dir = encoder, model_dir  # the recognizer: loaded when first needed

    def probability(self, descriptor: np.ndarray) -> float:
        """P(the face reads as a woman's) from its dlib descriptor."""
        return float(1.0 / (1.0 + np.exp(-(np.asarray(descriptor, np.float64) @ self.weights + self.bias))))

    def label(self, descriptor: np.ndarray) -> str | None:
        """MAN, WOMAN, or None where the probe is undecided."""
        return self.decide(self.probability(descriptor))

    def decide(self, p: float) -> str | None:
        """The label of probability `p` (None: undecided, or not a number)."""
        return None if not abs(p - 0.5) > self.undecided else (WOMAN if p > 0.5 else MAN)

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's descriptor, as the probe reads it."""
        if self._encoder is None:
            from anonymizer.measure.encoder import ENCODERS

            self._encoder = ENCODERS.create(self.recognizer, model_dir=self._model_dir)
        return self._encoder.embed(image, self._encoder.align(image, [face]))[0]


class BankPeople:
    """Each bank person's label (a person's views share it): as the build recorded it (`recorded`: identity →
    label, anonymizer.bank.stylegan.recorded_sexes) where that covers everyone, else read now from their most
    frontal face (one descriptor per person, about 25 ms each, when the operator starts)."""

    def __init__(self, bank, probe: ApparentSex, recorded: dict[str, str | None] | None = None) -> None:
        ids = bank.index["identity"].to_numpy()
        people = {str(p) for p in np.unique(ids)}
        covered = bool(recorded) and people <= recorded.keys()
        self.of_person: dict[str, str | None] = ({p: recorded[p] for p in people} if covered
                                                 else self._read(bank, probe, ids))
        self.labels = np.array([self.of_person[str(p)] for p in ids], dtype=object)  # per bank face

    @staticmethod
    def _read(bank, probe: ApparentSex, ids: np.ndarray) -> dict[str, str | None]:
        from anonymizer.bank.composite import face_for

        frontal = np.abs(bank.features[:, :2]).sum(1)
        out = {}
        for person in np.unique(ids):
            mine = ids == person
            k = int(np.flatnonzero(mine)[np.argmin(frontal[mine])])
            out[str(person)] = probe.label(probe.describe(bank.crop(k), face_for(bank.landmarks(k))))
        return out

    def allowed(self, label: str | None) -> np.ndarray | None:
        """Per bank face, whether it may go on a face read as `label`: those of people read alike (an
        undecided bank person's result may read as either); None (any) where the face is undecided or the
        bank has nobody read alike."""
        if label is None:
            return None
        ok = self.labels == label
        return ok if ok.any() else None
