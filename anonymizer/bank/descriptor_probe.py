"""Linear probes on dlib's face descriptor (what a face reads as: apparent sex, skin tone), and each bank
person's descriptor for them (and apparent age, which a network of its own reads).

Why the descriptor: the identity guard computes the original's anyway, so reading a face costs nothing more,
and a recognizer's descriptor is made to stay put under the light a photo was taken in, which moves a reading
of the skin's pixels (anonymizer.bank.tone). A probe's card (a JSON file among the models) holds its weights,
bias and recognizer; a face's reading is only used to choose bank faces: it is neither stored nor reported.
"""

from __future__ import annotations

import io
import json

import numpy as np

from anonymizer.bank.shape import face_for
from anonymizer.faces import Face
from anonymizer.models import locate, sha256_file
from anonymizer.onnx_runtime import derived

AGE_MAX_YAW = 30.0  # degrees: a bank person's age is read on their faces turned this far at most


class DescriptorProbe:
    MODEL = ""  # anonymizer.models name of the probe's card: for the audit report and the licence gate

    def __init__(self, model_dir: str | None = None, encoder=None) -> None:
        path = locate(self.MODEL, model_dir)
        self.sha256 = sha256_file(str(path))
        self.card = json.loads(path.read_text())
        self.weights = np.asarray(self.card["weights"], np.float64)
        self.bias = float(self.card["bias"])
        self.recognizer = self.card["recognizer"]
        self._encoder, self.model_dir = encoder, model_dir  # the recognizer: loaded when first needed

    def linear(self, descriptor: np.ndarray) -> float:
        return float(np.asarray(descriptor, np.float64) @ self.weights + self.bias)

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's descriptor, as the probe reads it."""
        if self._encoder is None:
            from anonymizer.measure.encoder import ENCODERS

            self._encoder = ENCODERS.create(self.recognizer, model_dir=self.model_dir)
        return self._encoder.embed(image, self._encoder.align(image, [face]))[0]


def frontal_faces(bank) -> dict[str, int]:
    """Each bank person's most frontal face (|yaw| + |pitch| least): the one a person is read on."""
    ids = bank.index["identity"].to_numpy()
    frontal = np.abs(bank.features[:, :2]).sum(1)
    out = {}
    for person in np.unique(ids):
        mine = np.flatnonzero(ids == person)
        out[str(person)] = int(mine[np.argmin(frontal[mine])])
    return out


def face_ages(bank, reader) -> np.ndarray:
    """Each bank face's apparent age in years (anonymizer.measure.apparent_age.AgeReader `reader`). About 5 ms a
    face, so kept with the derived models by the bank's manifest and the reader."""
    def read() -> bytes:
        ages = [reader.read(bank.crop(k), [face_for(bank.landmarks(k))])[0] for k in range(len(bank))]
        return json.dumps([float(a) for a in ages]).encode()

    manifest = (bank.root / "manifest.json").read_bytes()
    return np.array(json.loads(derived("bank-face-ages", manifest + reader.sha256.encode(), read, suffix=".json")))


def person_ages(bank, reader) -> dict[str, float]:
    """Each bank person's apparent age: the median of `face_ages` over the person's faces turned at most
    AGE_MAX_YAW (all of them where none is). One face is not enough: in the default bank one person read 12 years on
    their most frontal face and 21-36 on four of their other six, and looks it. Faces turned further read younger
    and scatter (at 44°, median −2.4 years and mean |shift| 7.5 against the person's first face, 3.1 at 2°)."""
    ids = bank.index["identity"].to_numpy()
    near = np.abs(bank.index["yaw"].to_numpy()) <= AGE_MAX_YAW
    ages = face_ages(bank, reader)
    out = {}
    for p in np.unique(ids):
        own = ids == p
        out[str(p)] = float(np.median(ages[own & near] if (own & near).any() else ages[own]))
    return out


def frontal_descriptors(bank, probe: DescriptorProbe) -> dict[str, np.ndarray]:
    """Each bank person's descriptor, from their most frontal face: about 20 ms a person, so kept with the
    derived models by the bank's manifest and the recognizer, and read from there by later operators."""
    from anonymizer.measure.encoder import ENCODERS

    def read() -> bytes:  # in float32 whatever the guard runs: the same readings on every machine
        encoder = ENCODERS.create(probe.recognizer, model_dir=probe.model_dir)
        out = {}
        for person, k in frontal_faces(bank).items():
            crop = bank.crop(k)
            out[person] = encoder.embed(crop, encoder.align(crop, [face_for(bank.landmarks(k))]))[0]
        buf = io.BytesIO()
        np.savez(buf, **out)
        return buf.getvalue()

    manifest = (bank.root / "manifest.json").read_bytes()
    data = derived(f"bank-people-{probe.recognizer}", manifest, read, suffix=".npz")
    with np.load(io.BytesIO(data)) as z:
        return {name: z[name] for name in z.files}
