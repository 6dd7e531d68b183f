"""A face bank on disk: crops, one index, a manifest of hashes, a coverage plot; written resumably, read
only after every hash checks.

Layout of a bank directory:
    crops/<face_id>.png   one bank face, CROP_SIZE² RGB, eye centres at shape.CROP_EYES
    mattes/<face_id>.png  its head matte (anonymizer.bank.matte): 255 where the crop shows the head
    index.parquet         one row per face: INDEX_COLUMNS
    manifest.json         source, licence and licence class (anonymizer.models.LICENCE_CLASSES, which the
                          licence gate reads), k, build parameters, and the sha256 of the index and every file
    coverage.png          pose × expression coverage
    directions.npz        (StyleGAN banks with views) the latent directions used, listed in the manifest

While building, rows go to `.build/index/part-NNNNN.parquet` every `part_size` faces and each crop is
written as soon as it is made, so memory stays flat with the bank's size and an interrupted build resumes:
a face whose crop and row both exist (and agree) is not made again. `finish` merges the parts, makes any
matte still missing, writes the manifest and the plot, and removes `.build/`. A build over a finished bank
whose mattes were made another way (`matte` in its manifest) makes them all again. A bank finished without
mattes (an older one) still loads: the operator then makes each matte (GrabCut) when first needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd

from anonymizer.bank import tone
from anonymizer.bank.matte import HeadMatter, head_matte
from anonymizer.bank.shape import CROP_SIZE, FEATURE_COLUMNS, Features, extend, mirror

FORMAT = 1
INDEX_COLUMNS = ("face_id", "identity", "landmarks", *FEATURE_COLUMNS, "source", "licence", "crop", "crop_sha256",
                 "donors", "checks")
TONE = "tone"  # the crop's skin tone (ITA°, anonymizer.bank.tone); banks built before it was recorded lack it


class BankError(ValueError):
    """A bank that is missing, incomplete or altered."""


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class BankWriter:
    """Adds faces to a bank directory; resumable (see the module doc)."""

    def __init__(self, root: str | os.PathLike, source: str, licence: str, licence_class: str = "unknown",
                 part_size: int = 64, model_dir: str | None = None) -> None:
        from anonymizer.models import LICENCE_CLASSES

        if licence_class not in (*LICENCE_CLASSES, "unknown"):
            raise ValueError(f"bank {root}: licence_class must be one of {LICENCE_CLASSES} or unknown, "
                             f"got {licence_class!r}")
        self.root = Path(root)
        self.source, self.licence, self.part_size = source, licence, int(part_size)
        self.licence_class = licence_class
        self.matter = HeadMatter(model_dir=model_dir)
        (self.root / "crops").mkdir(parents=True, exist_ok=True)
        (self.root / "mattes").mkdir(exist_ok=True)
        self.parts = self.root / ".build" / "index"
        self.parts.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict] = []
        self.done: set[str] = set()
        self._only: set[str] | None = None
        # The bank is unfinished from here until `finish`: load_bank refuses it. Mattes made another way than
        # this build makes them are made again there.
        stale = self.root / ".build" / "mattes_stale"  # kept until `finish`: a resumed build still knows
        manifest = self.root / "manifest.json"
        if manifest.is_file() and _matte_method(manifest) != self.matter.method:
            stale.parent.mkdir(exist_ok=True)
            stale.touch()
        self._stale_mattes = stale.is_file()
        manifest.unlink(missing_ok=True)
        index = self.root / "index.parquet"
        if index.is_file() and not any(self.parts.glob("part-*.parquet")):  # extending a finished bank
            shutil.copyfile(index, self.parts / "part-00000.parquet")
        for part in sorted(self.parts.glob("part-*.parquet")):
            for row in pd.read_parquet(part).to_dict("records"):
                crop = self.root / row["crop"]
                if crop.is_file() and sha256_path(crop) == row["crop_sha256"]:
                    self.done.add(row["face_id"])
        self._next_part = len(list(self.parts.glob("part-*.parquet")))

    def has(self, face_id: str) -> bool:
        return face_id in self.done

    def only(self, identities: Iterable[str]) -> None:
        """From now on the bank is these identities' faces: a build resumed with other people (e.g. another
        number of them) leaves out the faces made for the rest, and `finish` removes their files."""
        self._only = set(identities)

    def add(self, face_id: str, identity: str, crop: np.ndarray, pts68: np.ndarray, feats: Features,
            donors: list[str] | None = None, checks: dict | None = None) -> None:
        """One face: its CROP_SIZE² RGB crop (written now) and its row (written with the next part).
        `donors`: the source faces a composite averages; `checks`: e.g. the recognizers' distances to them."""
        if crop.shape != (CROP_SIZE, CROP_SIZE, 3) or crop.dtype != np.uint8:
            raise ValueError(f"bank face {face_id}: crop must be {CROP_SIZE}x{CROP_SIZE}x3 uint8, "
                             f"got {crop.shape} {crop.dtype}")
        ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"bank face {face_id}: PNG encoding failed")
        name = f"crops/{face_id}.png"
        _write_atomic(self.root / name, png.tobytes())
        self._write_matte(face_id, crop, pts68)
        row = {"face_id": face_id, "identity": identity,
               "landmarks": np.asarray(pts68, np.float32).reshape(-1).tolist(),
               **{c: float(getattr(feats, c)) for c in FEATURE_COLUMNS},
               "source": self.source, "licence": self.licence, "crop": name,
               "crop_sha256": hashlib.sha256(png.tobytes()).hexdigest(), "donors": list(donors or []),
               "checks": json.dumps(checks or {}, sort_keys=True)}
        angle = tone.ita(crop, np.asarray(pts68, np.float64).reshape(68, 2))
        row[TONE] = np.nan if angle is None else angle
        self._pending.append(row)
        self.done.add(face_id)
        if len(self._pending) >= self.part_size:
            self.flush()

    def _write_matte(self, face_id: str, crop: np.ndarray, pts68: np.ndarray) -> None:
        pts = np.asarray(pts68, np.float32).astype(np.float64).reshape(68, 2)  # as the index keeps them
        ok, png = cv2.imencode(".png", self.matter(crop, pts) * 255)
        if not ok:
            raise ValueError(f"bank face {face_id}: PNG encoding of its matte failed")
        _write_atomic(self.root / matte_name(face_id), png.tobytes())

    def flush(self) -> None:
        if not self._pending:
            return
        path = self.parts / f"part-{self._next_part:05d}.parquet"
        df = pd.DataFrame(self._pending, columns=[*INDEX_COLUMNS, TONE])
        tmp = path.with_name(path.name + ".tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        self._next_part += 1
        self._pending = []

    def rows(self) -> pd.DataFrame:
        """Every row written so far whose crop exists and matches, one per face (the latest part wins)."""
        self.flush()
        frames = [pd.read_parquet(p) for p in sorted(self.parts.glob("part-*.parquet"))]
        if not frames:
            return pd.DataFrame(columns=list(INDEX_COLUMNS))
        df = pd.concat(frames, ignore_index=True).drop_duplicates("face_id", keep="last")
        if self._only is not None:
            df = df[df["identity"].isin(self._only)]
        ok = [(self.root / c).is_file() and sha256_path(self.root / c) == s for c, s in zip(df["crop"], df["crop_sha256"])]
        return df[ok].sort_values("face_id").reset_index(drop=True)

    def finish(self, k: int | None, build: dict, extra_files: tuple[str, ...] = (), summary: dict | None = None) -> Path:
        """Merge the index, plot coverage, write the manifest (last: a bank without one is not finished)."""
        df = self.rows()
        if df.empty:
            raise BankError(f"bank {self.root}: no face was made (see the build log for why)")
        # Crops no row describes (a build stopped between crop and part) are not part of the bank.
        listed = set(df["crop"]) | {matte_name(f) for f in df["face_id"]}
        for p in [*(self.root / "crops").glob("*.png"), *(self.root / "mattes").glob("*.png")]:
            if f"{p.parent.name}/{p.name}" not in listed:
                p.unlink()
        for face_id, crop, pts in zip(df["face_id"], df["crop"], df["landmarks"]):
            if self._stale_mattes or not (self.root / matte_name(face_id)).is_file():  # made otherwise, or lost
                self._write_matte(face_id, cv2.imread(str(self.root / crop))[..., ::-1], pts)
        index = self.root / "index.parquet"
        tmp = index.with_name("index.parquet.tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, index)
        plot_coverage(df, self.root / "coverage.png", title=f"{self.source}: {len(df)} faces, "
                                                             f"{df['identity'].nunique()} identities")
        files = {c: s for c, s in zip(df["crop"], df["crop_sha256"])}
        for face_id in df["face_id"]:
            files[matte_name(face_id)] = sha256_path(self.root / matte_name(face_id))
        for name in ("coverage.png", *extra_files):
            files[name] = sha256_path(self.root / name)
        manifest = {"format": FORMAT, "source": self.source, "licence": self.licence,
                    "licence_class": self.licence_class, "k": k, "matte": self.matter.method,
                    "faces": int(len(df)), "identities": int(df["identity"].nunique()), "crop_size": CROP_SIZE,
                    "build": build, "summary": summary or {},
                    "index": {"file": "index.parquet", "sha256": sha256_path(index)},
                    "files": dict(sorted(files.items()))}
        _write_atomic(self.root / "manifest.json", json.dumps(manifest, indent=1).encode())
        shutil.rmtree(self.root / ".build", ignore_errors=True)
        return self.root


def _matte_method(manifest: Path) -> str | None:
    """How a finished bank's mattes were made (banks built before the manifest said: grabcut)."""
    try:
        return json.loads(manifest.read_text()).get("matte", "grabcut")
    except (ValueError, AttributeError):
        return None


def matte_name(face_id: str) -> str:
    return f"mattes/{face_id}.png"


def plot_coverage(df: pd.DataFrame, path: Path, title: str) -> None:
    """Yaw against pitch, mouth opening and smile width: where the bank has faces to match a photo's, its faces'
    mirror images (which the bank operator also matches, `mirror`) in grey."""
    from anonymizer.pyplot import plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, col, label in zip(axes, ("pitch", "mouth_open", "smile"),
                              ("pitch (°)", "mouth opening / eye distance", "mouth width / eye distance")):
        ax.scatter(-df["yaw"], df[col], s=6, color="0.82", label="mirror images")
        ax.scatter(df["yaw"], df[col], s=8, alpha=0.6, label="bank faces")
        ax.set_xlabel("yaw (°)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=7)
    people = df.groupby("identity")[TONE].median().dropna() if TONE in df else pd.Series(dtype=float)
    counts = tone.band_counts(people)
    names = list(counts)[::-1]
    axes[3].bar(range(len(names)), [counts[name] for name in names])
    axes[3].set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes[3].set_ylabel("identities")
    axes[3].set_title("skin tone as rendered (ITA°, anonymizer.bank.tone)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------- reading

@dataclass
class Bank:
    """A verified bank. `features` is N×4 (shape.Features.vector per face); crops load on demand.

    `choices` counts the faces an operator may pick: with `mirrored`, face N + i is face i flipped left to
    right (a face turned the other way, with the same expression), which doubles pose coverage for free."""

    root: Path
    manifest: dict
    index: pd.DataFrame
    features: np.ndarray
    mirrored: bool = False

    def __len__(self) -> int:
        return len(self.index)

    @property
    def choices(self) -> int:
        return len(self) * (2 if self.mirrored else 1)

    @property
    def licence(self) -> str:
        return self.manifest["licence"]

    @property
    def in_colour(self) -> bool:
        """False for a bank of grey faces (composites of greyscale donors, `build.colour`)."""
        return bool(self.manifest.get("build", {}).get("colour", True))

    @property
    def rendered(self) -> bool:
        """Whether its faces are StyleGAN renders (anonymizer.bank.stylegan.render_frame frames them)."""
        return self.manifest.get("build", {}).get("kind") == "stylegan"

    @property
    def landmarker(self) -> str:
        """The landmarker (anonymizer.bank.shape.LANDMARKERS) its faces' points come from."""
        return self.manifest.get("build", {}).get("landmarks", "dlib_shape68")

    def face_id(self, i: int) -> str:
        n = len(self)
        return self.index["face_id"].iat[i % n] + (":mirrored" if i >= n else "")

    def person(self, i: int) -> str:
        """The virtual identity face i shows (its mirror image shows the same person)."""
        return str(self.index["identity"].iat[i % len(self)])

    def landmarks(self, i: int) -> np.ndarray:
        n = len(self)
        pts = np.asarray(self.index["landmarks"].iat[i % n], np.float64).reshape(68, 2)
        return mirror(pts, CROP_SIZE) if i >= n else pts

    def points(self, i: int) -> np.ndarray:
        """Face i's 105 warp points (shape.extend) in its crop."""
        return extend(self.landmarks(i))

    def crop(self, i: int) -> np.ndarray:
        n = len(self)
        img = _read_crop(str(self.root / self.index["crop"].iat[i % n]), self.index["crop_sha256"].iat[i % n])
        return np.ascontiguousarray(img[:, ::-1]) if i >= n else img

    def matte(self, i: int) -> np.ndarray:
        """Face i's head matte, uint8 0/1 over its crop: the one the build stored, else made now (a bank built
        before mattes were stored; 18 ms, kept for the process)."""
        n = len(self)
        name = matte_name(self.index["face_id"].iat[i % n])
        sha = self.manifest["files"].get(name)
        if sha is not None:
            m = _read_matte(str(self.root / name), sha)
        else:
            m = _make_matte(str(self.root / self.index["crop"].iat[i % n]), self.index["crop_sha256"].iat[i % n],
                            tuple(self.index["landmarks"].iat[i % n]))
        return np.ascontiguousarray(m[:, ::-1]) if i >= n else m

    @cached_property
    def tones(self) -> np.ndarray:
        """Each face's skin tone (ITA°, anonymizer.bank.tone; NaN where unreadable): the index's, else read from
        its crop now (a bank built before tones were recorded)."""
        known = (self.index[TONE].to_numpy(np.float64) if TONE in self.index
                 else np.full(len(self), np.nan))
        for i in np.flatnonzero(np.isnan(known)):
            angle = tone.ita(self.crop(int(i)), self.landmarks(int(i)))
            known[i] = np.nan if angle is None else angle
        return known

    @cached_property
    def identities(self) -> list[str]:
        """The bank's virtual identities (sorted names): a keyed run shows identity i as the faces of the i-th."""
        return sorted(self.index["identity"].unique())

    def nearest(self, vector: np.ndarray, n: int, identity: int | None = None,
                allowed: np.ndarray | None = None) -> np.ndarray:
        """Indices (below `choices`) of the n faces nearest in pose and expression (ties by index); with
        `identity`, among the faces of that virtual identity only; with `allowed` (a bool per bank face),
        among those only."""
        feats = self.features
        if self.mirrored:
            flipped = feats.copy()
            flipped[:, 0] *= -1  # yaw changes sign; pitch and expression do not
            feats = np.concatenate([feats, flipped])
        d = np.linalg.norm(feats - vector, axis=1)
        if identity is not None:
            mine = (self.index["identity"] == self.identities[identity]).to_numpy()
            allowed = mine if allowed is None else mine & allowed
        if allowed is not None:
            d[~np.tile(allowed, len(d) // len(allowed))] = np.inf
            n = min(n, int(np.isfinite(d).sum()))
        return np.lexsort((np.arange(len(d)), d))[:n]


def _decode_verified(path: str, sha: str, what: str, flags: int) -> np.ndarray:
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise BankError(f"bank {what} {path}: sha256 differs from the bank's (the file changed after load_bank)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise BankError(f"bank {what} {path}: not a readable image")
    return img


@lru_cache(maxsize=256)
def _read_crop(path: str, sha: str) -> np.ndarray:
    return cv2.cvtColor(_decode_verified(path, sha, "crop", cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@lru_cache(maxsize=1024)
def _read_matte(path: str, sha: str) -> np.ndarray:
    img = _decode_verified(path, sha, "matte", cv2.IMREAD_GRAYSCALE)
    if img.shape != (CROP_SIZE, CROP_SIZE):
        raise BankError(f"bank matte {path}: not {CROP_SIZE}x{CROP_SIZE}")
    return (img > 127).astype(np.uint8)


@lru_cache(maxsize=1024)
def _make_matte(crop: str, sha: str, pts68: tuple) -> np.ndarray:
    return head_matte(_read_crop(crop, sha), np.asarray(pts68, np.float64).reshape(68, 2))


def locate_bank(bank: str | os.PathLike, model_dir: str | None = None) -> Path:
    """A bank directory given as a path, else by name under `banks/` in the model directories (the policy's
    model_dir, $ANONYMIZER_MODEL_DIR, ~/.cache/anonymizer/models, ...); `anonymizer bank build` writes there."""
    from anonymizer.models import search_dirs

    path = Path(bank).expanduser()
    if path.is_dir() or len(path.parts) > 1:
        return path
    looked = [d / "banks" / str(bank) for d in search_dirs(model_dir)]
    found = next((p for p in looked if p.is_dir()), None)
    if found is None:
        raise BankError(f"face bank {bank!r} not found; looked in: {', '.join(map(str, looked))} "
                        "(build one with `anonymizer bank build`)")
    return found


def load_bank(path: str | os.PathLike) -> Bank:
    """Open a bank, refusing (BankError naming the file) unless the manifest's hashes match the index and
    every file, and the index, the manifest and the crops on disk list the same faces."""
    root = Path(path)
    mpath = root / "manifest.json"
    if not root.is_dir():
        raise BankError(f"face bank {root}: not a directory")
    if not mpath.is_file():
        raise BankError(f"face bank {root}: {mpath} missing (an unfinished or foreign directory)")
    try:
        manifest = json.loads(mpath.read_text())
        ipath = root / manifest["index"]["file"]
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BankError(f"face bank {root}: {mpath} is not a bank manifest: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BankError(f"face bank {root}: {mpath} has format {manifest.get('format')}, this code reads {FORMAT}")
    if not ipath.is_file():
        raise BankError(f"face bank {root}: index {ipath} missing")
    if sha256_path(ipath) != manifest["index"]["sha256"]:
        raise BankError(f"face bank {root}: index {ipath} sha256 differs from {mpath}")
    index = pd.read_parquet(ipath)
    missing_cols = set(INDEX_COLUMNS) - set(index.columns)
    if missing_cols:
        raise BankError(f"face bank {root}: index {ipath} lacks columns {sorted(missing_cols)}")
    crops = set(index["crop"])
    listed = {f for f in files if f.startswith("crops/")}
    on_disk = {f"crops/{p.name}" for p in (root / "crops").glob("*")} if (root / "crops").is_dir() else set()
    for what, diff in (("in the index but not the manifest", crops - listed),
                       ("in the manifest but not the index", listed - crops),
                       ("in the index but not on disk", crops - on_disk),
                       ("on disk but not in the index", on_disk - crops)):
        if diff:
            raise BankError(f"face bank {root}: crops {what}: {', '.join(str(root / d) for d in sorted(diff)[:5])}"
                            + (f" and {len(diff) - 5} more" if len(diff) > 5 else ""))
    mattes = {f for f in files if f.startswith("mattes/")}
    if mattes:  # a bank built before mattes were stored has none
        expected = {matte_name(f) for f in index["face_id"]}
        m_disk = {f"mattes/{p.name}" for p in (root / "mattes").glob("*")} if (root / "mattes").is_dir() else set()
        for what, diff in (("of no face in the index", mattes - expected), ("missing for faces", expected - mattes),
                           ("on disk but not in the manifest", m_disk - mattes)):
            if diff:
                raise BankError(f"face bank {root}: mattes {what}: {', '.join(str(root / d) for d in sorted(diff)[:5])}"
                                + (f" and {len(diff) - 5} more" if len(diff) > 5 else ""))
    for crop, sha in zip(index["crop"], index["crop_sha256"]):
        if files[crop] != sha:
            raise BankError(f"face bank {root}: crop {root / crop}: the index's sha256 differs from {mpath}")
    for name, sha in files.items():
        p = root / name
        if not p.is_file():
            raise BankError(f"face bank {root}: file {p} listed in {mpath} is missing")
        if sha256_path(p) != sha:
            raise BankError(f"face bank {root}: file {p} sha256 differs from {mpath} (altered after the build)")
    feats = np.stack([Features(*(float(r[c]) for c in FEATURE_COLUMNS)).vector()
                      for r in index[list(FEATURE_COLUMNS)].to_dict("records")]) if len(index) else np.zeros((0, 4))
    return Bank(root, manifest, index, feats)
