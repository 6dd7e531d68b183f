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
from functools import cached_property

import numpy as np
import pandas as pd

from anonymizer.faces import Face
from anonymizer.models import locate, sha256_file

MAN, WOMAN = "M", "F"


class ApparentSex:
    MODEL = "apparent_sex"  # anonymizer.models name: the probe's file, for the audit report and licence gate

    def __init__(self, model_dir: str | None = None, encoder=None) -> None:
        from anonymizer.measure.encoder import ENCODERS

        path = locate(self.MODEL, model_dir)
        self.sha256 = sha256_file(str(path))
        card = json.loads(path.read_text())
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
        return self.decide(self.probability(descriptor))

    def decide(self, p: float) -> str | None:
        """The label of probability `p` (None: undecided, or not a number)."""
        return None if not abs(p - 0.5) > self.undecided else (WOMAN if p > 0.5 else MAN)

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's descriptor, as the probe reads it."""
        return self._encoder.embed(image, self._encoder.align(image, [face]))[0]


class BankPeople:
    """Each bank person's label (a person's views share it): as a StyleGAN bank's build read it on their first
    render with this probe, else read now from their most frontal face (one descriptor per person, about
    25 ms each, when the operator starts)."""

    def __init__(self, bank, probe: ApparentSex) -> None:
        self._ids = bank.index["identity"].to_numpy()
        self.of_person: dict[str, str | None] = self._recorded(bank, probe) or self._read(bank, probe)

    def _recorded(self, bank, probe: ApparentSex) -> dict[str, str | None] | None:
        """The build's readings (anonymizer.bank.stylegan: candidates.parquet, people named s<6 digits>), where
        this probe made them and they cover every bank person; else None."""
        path = bank.root / "candidates.parquet"
        summary = bank.manifest.get("summary", {}).get("candidates", {})
        if summary.get("apparent_sex_probe") != probe.sha256 or not path.is_file():
            return None
        rows = pd.read_parquet(path, columns=["person", "female"])
        read = {f"s{int(p):06d}": probe.decide(float(f)) for p, f in zip(rows["person"], rows["female"])}
        people = {str(p) for p in np.unique(self._ids)}
        return {p: read[p] for p in people} if people <= read.keys() else None

    def _read(self, bank, probe: ApparentSex) -> dict[str, str | None]:
        from anonymizer.bank.composite import face_for

        frontal = np.abs(bank.features[:, :2]).sum(1)
        out = {}
        for person in np.unique(self._ids):
            mine = self._ids == person
            k = int(np.flatnonzero(mine)[np.argmin(frontal[mine])])
            out[str(person)] = probe.label(probe.describe(bank.crop(k), face_for(bank.landmarks(k))))
        return out

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
