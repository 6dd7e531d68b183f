"""Linking faces of one person across a dataset, with memory that grows with people, not faces.

Online leader–follower clustering in the recognizer's (Euclidean) embedding distance: each face joins
the person whose centroid is nearest, if nearer than `threshold`, and moves that centroid; else it starts a
new person. A centroid is the direction of its faces' mean at their mean length (for L2-normalised
recognizers: the normalised mean). The plain mean would shrink towards the origin as a person gathers
varied faces and then draw in everyone else's (on LFW a plain-mean linker merges hundreds of people one
step above its best threshold); the rescaled one degrades gracefully. The state is one mean vector, one
mean length and one count per person: the faces themselves are never kept, so a dataset of any size
streams through, and the state carries over to the next run (`save`/`load`, encrypted), where new faces
join the people already known.

The result depends on the order of the faces, which the caller fixes (the pipeline's sorted keys): the
same faces in the same order always give the same person ids. `assign` is a second, read-only pass: each
face goes to the nearest final centroid, which undoes early joins made while a centroid was still moving.

A person may carry a label (up to LABEL_BYTES ASCII characters; the pipeline stores how they read,
anonymizer.pipeline.link), set once and kept from then on, so that what is derived from it (their virtual
identity) never changes.

Person ids are "<space>#<n>", n counting people in order of first appearance. Virtual identities come from
the ids under a key (anonymizer.identity.keys.virtual_identity), so two states that share a key should
have different `space`s, or their first people share virtual identities.
"""

from __future__ import annotations

import json
import math
import os
import posixpath

import numpy as np

from anonymizer.identity.errors import IdentityStateError
from anonymizer.identity.state import seal, unseal
from anonymizer.storage import Location

STATE_NAME = "identities.state"
# Linking distances measured on LFW's calibration identities (`anonymizer eval linking`, docs/benchmarks.md).
MEASURED_THRESHOLDS = {"mobilefacenet": 1.075}
LABEL_BYTES = 4  # a person's label: at most this many ASCII characters (zero bytes pad it in the state)


Where = Location | str | os.PathLike  # a Location, a local path, or s3://bucket/prefix


def _location(location: Where) -> Location:
    return location if isinstance(location, Location) else Location.parse(os.fspath(location))


class Linker:
    """Faces → person ids. Holds biometric data (centroids of real faces): it refuses to be pickled, its
    repr shows counts only, and it goes to storage only encrypted (`save`, `seal`)."""

    def __init__(self, threshold: float, encoder: str, space: str = "") -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"Linker: threshold must be a positive distance, got {threshold!r}")
        if not isinstance(encoder, str) or not encoder:
            raise ValueError(f"Linker: encoder must name the recognizer (e.g. 'mobilefacenet'), got {encoder!r}")
        if not isinstance(space, str) or "#" in space:
            raise ValueError(f"Linker: space must be a string without '#', got {space!r}")
        self.threshold, self.encoder, self.space = float(threshold), encoder, space
        self._means = np.zeros((0, 0), np.float32)  # mean vector per person; rows beyond `persons`: spare
        self._lengths = np.zeros(0, np.float32)     # mean length of the person's vectors
        self._counts = np.zeros(0, np.int64)
        self._centroids = np.zeros((0, 0), np.float32)  # derived from the two above: what faces are compared to
        self._labels = np.zeros((0, LABEL_BYTES), np.uint8)  # per person, zero-padded; all zero: none yet
        self._n = 0
        self.faces = 0

    # --- linking ------------------------------------------------------------------------------------

    @property
    def persons(self) -> int:
        return self._n

    @property
    def dim(self) -> int | None:
        return self._means.shape[1] if self._means.shape[1] else None

    def person_id(self, index: int) -> str:
        return f"{self.space}#{index + 1}"

    def _index(self, person_id: str) -> int:
        space, _, n = person_id.rpartition("#")
        if space != self.space or not n.isdigit() or not 0 < int(n) <= self._n:
            raise KeyError(f"Linker: no person {person_id!r} in this state")
        return int(n) - 1

    def label(self, person_id: str) -> str | None:
        """The person's label, None where none was set."""
        label = self._labels[self._index(person_id)].tobytes().rstrip(b"\0").decode("ascii")
        return label or None

    def settle(self, person_id: str, label: str | None) -> str | None:
        """Give the person `label` unless they have one already (None sets nothing); returns theirs."""
        i = self._index(person_id)
        if label is not None and (not isinstance(label, str) or not 0 < len(label) <= LABEL_BYTES
                                  or not all(0 < ord(c) < 128 for c in label)):
            raise ValueError(f"Linker: a label is 1 to {LABEL_BYTES} ASCII characters, got {label!r}")
        if not self._labels[i].any() and label is not None:
            self._labels[i] = np.frombuffer(label.encode("ascii").ljust(LABEL_BYTES, b"\0"), np.uint8)
        return self.label(person_id)

    def add(self, embeddings: np.ndarray) -> list[str]:
        """One person id per row of `embeddings` (faces × dim, in the caller's fixed order)."""
        out = []
        for x in self._check(embeddings, "add"):
            i, d = self._nearest(x)
            if i is not None and d < self.threshold:
                c = self._counts[i] + 1
                x64 = x.astype(np.float64)
                self._means[i] = (self._means[i] + (x64 - self._means[i]) / c).astype(np.float32)
                self._lengths[i] = np.float32(self._lengths[i] + (np.linalg.norm(x64) - self._lengths[i]) / c)
                self._counts[i] = c
                self._centroids[i] = self._centroid(i)
            else:
                i = self._new(x)
            self.faces += 1
            out.append(self.person_id(i))
        return out

    def assign(self, embeddings: np.ndarray) -> list[str | None]:
        """The nearest known person within `threshold` per row (None: nobody), leaving the state as it is."""
        out: list[str | None] = []
        for x in self._check(embeddings, "assign"):
            i, d = self._nearest(x)
            out.append(self.person_id(i) if i is not None and d < self.threshold else None)
        return out

    def _check(self, embeddings: np.ndarray, op: str) -> np.ndarray:
        x = np.asarray(embeddings)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"Linker.{op}: embeddings must be a numeric faces x dim array, got shape {x.shape} "
                             f"of {x.dtype}")
        if not len(x):
            return x.astype(np.float32)
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"Linker.{op}: embeddings have {x.shape[1]} dimensions, but this state's recognizer "
                             f"({self.encoder}) gives {self.dim}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"Linker.{op}: embeddings contain NaN or infinite values")
        return x

    def _nearest(self, x: np.ndarray) -> tuple[int | None, float]:
        if not self._n:
            return None, math.inf
        d = np.sqrt(np.square(self._centroids[:self._n] - x).sum(axis=1))
        i = int(np.argmin(d))  # the first of equals: deterministic
        return i, float(d[i])

    def _centroid(self, i: int) -> np.ndarray:
        m = self._means[i].astype(np.float64)
        norm = float(np.linalg.norm(m))
        return (m * (float(self._lengths[i]) / norm) if norm > 0 else m).astype(np.float32)

    def _new(self, x: np.ndarray) -> int:
        if self._n == len(self._means):
            cap = max(16, 2 * self._n)

            def grow(a: np.ndarray, *width: int) -> np.ndarray:
                out = np.zeros((cap, *width), a.dtype)
                if self._n:
                    out[:self._n] = a[:self._n]
                return out

            self._means, self._centroids = grow(self._means, len(x)), grow(self._centroids, len(x))
            self._lengths, self._counts = grow(self._lengths), grow(self._counts)
            self._labels = grow(self._labels, LABEL_BYTES)
        i = self._n
        self._means[i], self._counts[i] = x, 1
        self._lengths[i] = np.float32(np.linalg.norm(x.astype(np.float64)))
        self._centroids[i] = self._centroid(i)
        self._n += 1
        return i

    # --- state --------------------------------------------------------------------------------------

    def seal(self, key: bytes) -> bytes:
        """The state, encrypted under `key` (anonymizer.identity.state): safe to store or to send."""
        meta = json.dumps({"encoder": self.encoder, "threshold": self.threshold, "space": self.space,
                           "dim": self.dim or 0, "persons": self._n, "faces": self.faces,
                           "label_bytes": LABEL_BYTES}).encode()
        n = self._n
        plain = b"".join([len(meta).to_bytes(4, "big"), meta, self._counts[:n].astype("<i8").tobytes(),
                          self._lengths[:n].astype("<f4").tobytes(), self._means[:n].astype("<f4").tobytes(),
                          self._labels[:n].tobytes()])
        return seal(plain, key)

    @classmethod
    def unseal(cls, blob: bytes, key: bytes, where: str = "identity state") -> "Linker":
        plain = unseal(blob, key, where)
        try:
            n = int.from_bytes(plain[:4], "big")
            meta = json.loads(plain[4:4 + n])
            persons, dim = int(meta["persons"]), int(meta["dim"])
            # bytes per label: states saved before labels had none, then one character ("labels": true)
            width = int(meta.get("label_bytes", 1 if meta.get("labels") else 0))
            body = memoryview(plain)[4 + n:]
            if not 0 <= width <= LABEL_BYTES or len(body) != persons * (8 + 4 + 4 * dim + width):
                raise ValueError("size")
            linker = cls(meta["threshold"], meta["encoder"], meta["space"])
        except (ValueError, KeyError, TypeError):
            raise IdentityStateError(f"{where}: decrypted, but not a state this version reads") from None
        a, b, c = persons * 8, persons * 12, persons * (12 + 4 * dim)
        linker._counts = np.frombuffer(body[:a], "<i8").astype(np.int64)
        linker._lengths = np.frombuffer(body[a:b], "<f4").astype(np.float32)
        linker._means = np.frombuffer(body[b:c], "<f4").astype(np.float32).reshape(persons, dim)
        linker._labels = np.zeros((persons, LABEL_BYTES), np.uint8)
        linker._labels[:, :width] = np.frombuffer(body[c:], np.uint8).reshape(persons, width)
        linker._n, linker.faces = persons, int(meta["faces"])
        linker._centroids = np.zeros_like(linker._means)
        for i in range(persons):
            linker._centroids[i] = linker._centroid(i)
        return linker

    def save(self, location: Where, key: bytes, name: str = STATE_NAME) -> str:
        """Writes the encrypted state as one object `name` at `location` (local or s3://), atomically."""
        loc = _location(location)
        loc.write_bytes(name, self.seal(key))
        return posixpath.join(loc.uri, name)

    @classmethod
    def load(cls, location: Where, key: bytes, name: str = STATE_NAME, encoder: str | None = None,
             threshold: float | None = None) -> "Linker":
        """The state saved at `location` under `key`. `encoder`: refuse a state made with another recognizer
        (its distances mean nothing here); `threshold`: link new faces at this distance, not the saved one."""
        loc = _location(location)
        where = posixpath.join(loc.uri, name)
        try:
            blob = loc.read_bytes(name)
        except FileNotFoundError:
            raise FileNotFoundError(f"no identity state at {where}") from None
        linker = cls.unseal(blob, key, where)
        if encoder is not None and encoder != linker.encoder:
            raise IdentityStateError(f"{where}: made with recognizer {linker.encoder!r}, not {encoder!r}: "
                                     "its centroids cannot be compared with these embeddings")
        if threshold is not None:
            linker.threshold = cls(threshold, linker.encoder).threshold
        return linker

    @classmethod
    def open(cls, location: Where, key: bytes, threshold: float, encoder: str, name: str = STATE_NAME,
             space: str = "") -> "Linker":
        """The saved state if there is one (new faces then join its people, linked at `threshold`), else a
        new, empty one (`space` names a new state's people; a saved state keeps its own)."""
        loc = _location(location)
        if loc.exists(name):
            return cls.load(loc, key, name, encoder, threshold)
        return cls(threshold, encoder, space)

    def __repr__(self) -> str:
        return (f"Linker(encoder={self.encoder!r}, threshold={self.threshold:g}, space={self.space!r}, "
                f"persons={self._n}, faces={self.faces})")

    def __reduce_ex__(self, protocol):
        raise TypeError("a Linker holds centroids of real faces (biometric data): it is never pickled; "
                        "send Linker.seal(key) and Linker.unseal(blob, key) instead")
