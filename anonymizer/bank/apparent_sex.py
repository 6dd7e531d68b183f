"""Apparent sex: whether a face reads as a man's or a woman's, so a bank face can be chosen to read alike.

Why: a bank face chosen by pose and skin tone alone put men's faces on women (and the reverse) in about
half the photos' faces, which no photograph shows (docs/benchmarks.md, "Apparent sex"). The probe is a
logistic regression on dlib's face descriptor (training/apparent_sex.py; labels by looking at LFW photos,
a research data set, hence its licence class): no network of its own, and the descriptor is the one the
identity guard computes of each original anyway. A probability within `undecided` of 1/2 (children, faces
that read as neither) decides nothing: such a face gets bank people of the sex it leans to or who read as
neither (the lean is right for 28 of 34 such LFW faces in cross-validation and 6 of 9 held out, where any
bank person's sex would be a coin toss), and a bank person who reads as neither goes only on such faces. A
photo face's label only steers the choice: it is neither stored nor reported.
"""

from __future__ import annotations

import numpy as np

from anonymizer.bank.descriptor_probe import DescriptorProbe, frontal_descriptors

MAN, WOMAN = "M", "F"


class ApparentSex(DescriptorProbe):
    MODEL = "apparent_sex"

    def __init__(self, model_dir: str | None = None, encoder=None) -> None:
        super().__init__(model_dir, encoder)
        self.undecided = float(self.card["undecided"])

    def probability(self, descriptor: np.ndarray) -> float:
        """P(the face reads as a woman's) from its dlib descriptor."""
        return float(1.0 / (1.0 + np.exp(-self.linear(descriptor))))

    def label(self, descriptor: np.ndarray) -> str | None:
        """MAN, WOMAN, or None where the probe is undecided."""
        return self.decide(self.probability(descriptor))

    def decide(self, p: float) -> str | None:
        """The label of probability `p` (None: undecided, or not a number)."""
        return None if not abs(p - 0.5) > self.undecided else (WOMAN if p > 0.5 else MAN)

    @staticmethod
    def lean(p: float) -> str | None:
        """The side of 1/2 that `p` lies on, however near (None: exactly 1/2, or not a number)."""
        return WOMAN if p > 0.5 else MAN if p < 0.5 else None


class BankPeople:
    """Each bank person's label (a person's views share it): as the build recorded it (`recorded`: identity →
    label, anonymizer.bank.stylegan.recorded_sexes) where that covers everyone, else read from their most
    frontal face (anonymizer.bank.descriptor_probe.frontal_descriptors)."""

    def __init__(self, bank, probe: ApparentSex, recorded: dict[str, str | None] | None = None) -> None:
        ids = bank.index["identity"].to_numpy()
        people = {str(p) for p in np.unique(ids)}
        covered = bool(recorded) and people <= recorded.keys()
        if not covered:
            recorded = {p: probe.label(d) for p, d in frontal_descriptors(bank, probe).items()}
        self.of_person: dict[str, str | None] = {p: recorded[p] for p in people}
        self.labels = np.array([self.of_person[str(p)] for p in ids], dtype=object)  # per bank face

    def allowed(self, label: str | None, lean: str | None = None) -> np.ndarray | None:
        """Per bank face, whether it may go on a face read as `label`: those of people read alike (an
        undecided bank person's result may read as either). A face the probe leaves undecided but that leans
        to one sex (`lean`) may get people read as that sex or as neither. None (any) where the face neither
        reads nor leans, or the bank has nobody allowed."""
        if label is not None:
            ok = self.labels == label
        elif lean is not None:
            ok = self.labels != (MAN if lean == WOMAN else WOMAN)
        else:
            return None
        return ok if ok.any() else None
