"""Bank faces of people who do not exist: MobileStyleGAN (FFHQ 1024², OpenVINO IR) renders them.

Why: a composite still carries a little of each of its k donors; a synthetic person carries nobody's (up to
the generator's memorisation of its training set). The weights are distilled from NVIDIA's StyleGAN2-FFHQ,
so a bank made with them is non-commercial (`LICENCE`, recorded in its manifest).

Each virtual person i has its own z (from the RNG (seed, i)), mapped to w and truncated toward the mean w
(`truncation`: fewer odd faces, less variety); people rendered to fill a short skin-tone band are then moved
to that band's centre (`around_short_bands`). View 0 is that w as rendered. Pose and expression are
roughly linear in w (InterFaceGAN, Shen et al. 2020): once `fit_min` people are rendered, yaw, pitch,
mouth opening and smile width measured on them (dlib's 68 points) are regressed on w (ridge), and each
further view moves the person's w along one feature's direction by the amount that regression says
reaches the view's target (e.g. {"yaw": 30}); the rendered face's measured features are what the index
records. Files: `<model dir>/mobilestylegan/{Mapping,Synthesis}Network.{xml,bin}`, sha256-pinned.
Needs the optional dependency `openvino` (pip install 'anonymizer[stylegan]').
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd

from anonymizer.bank import shape as sh
from anonymizer.bank import tone
from anonymizer.bank.headwear import Headwear
from anonymizer.bank.store import BankWriter
from anonymizer.faces import Face
from anonymizer.measure.apparent_age import AGE_GROUP_NAMES, AgeReader, age_group
from anonymizer.models import ModelNotFoundError, describe, search_dirs, sha256_file

log = logging.getLogger(__name__)

LICENCE = "non-commercial (StyleGAN2-FFHQ)"
FILES = {
    "MappingNetwork.xml": "73e2096cad6e696e4af47df2477e048ab4c42c0e0dec83c7c66604822689e55b",
    "MappingNetwork.bin": "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305",
    "SynthesisNetwork.xml": "7918fce515243954d3e06628cb39a23902d6b1d5d02932cc0c2faee7a2aeeedd",
    "SynthesisNetwork.bin": "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645",
}
DIRECTION_FEATURES = ("yaw", "pitch", "mouth_open", "smile")
CANDIDATES_PER_PERSON = 10  # people rendered once per bank person kept: at truncation 0.7 about 2 % read dark
CENTRE_MIN = 8           # a short skin-tone band's centre: the mean w of at least this many of its candidates
CENTRED_PER_MISSING = 4  # people rendered around a short band's centre per person the band lacks
AGE_SHARES = {0: 1 / 8, 1: 1 / 8, 3: 1 / 8}  # age group (AGE_GROUP_NAMES) → its least share of the people kept
PROGRESS_EVERY = 128     # renders between progress lines: a default build renders about 5,000 in 38 min
CANDIDATES = "candidates.parquet"  # with `candidates`: each rendered candidate's skin reading, listed in the manifest
# The yaw direction turns heads further one way than the other (targets -30 / +30 reach medians -17° / +24°), and
# far along its short side people change (a girl turns into a woman): the wide views (+45, +60: medians +35°,
# +44°, up to 58°) go the long way only, and the operator's mirror images turn them the other way.
DEFAULT_VIEWS = ({"yaw": -30.0}, {"yaw": -15.0}, {"yaw": 15.0}, {"yaw": 30.0}, {"mouth_open": 0.35}, {"smile": 1.05},
                 {"yaw": 45.0}, {"yaw": 60.0})


def locate_stylegan(model_dir: str | None = None) -> Path:
    """The folder holding the four IR files, each checked against its pinned sha256."""
    tried = [d / "mobilestylegan" for d in search_dirs(model_dir)]
    for d in tried:
        if all((d / f).is_file() for f in FILES):
            for f, sha in FILES.items():
                digest = sha256_file(str(d / f))
                if digest != sha:
                    raise ValueError(f"MobileStyleGAN file {d / f}: sha256 {digest} differs from the pinned {sha}")
            return d
    raise ModelNotFoundError("MobileStyleGAN IR files (" + ", ".join(FILES) + ") not found; looked in: "
                             + ", ".join(map(str, tried)) + " (set --model-dir / $ANONYMIZER_MODEL_DIR)")


class Renderer:
    """z → w (truncated) → 1024² RGB uint8. `backend`: `openvino` (CPU), `torch` (the same graphs run by
    torch, anonymizer.bank.ir_torch: on a CUDA GPU where torch sees one, else on the CPU, several times
    slower than OpenVINO there), or `auto` (torch where CUDA is available, else OpenVINO)."""

    def __init__(self, model_dir: str | None = None, truncation: float = 0.7, threads: int = 1,
                 mean_samples: int = 512, backend: str = "auto") -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError("the StyleGAN bank needs openvino: pip install 'anonymizer[stylegan]'") from exc
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"stylegan: truncation must be in (0, 1], got {truncation}")
        if backend not in ("auto", "openvino", "torch"):
            raise ValueError(f"stylegan: backend must be auto, openvino or torch, got {backend!r}")
        import torch

        if backend == "auto":
            backend = "torch" if torch.cuda.is_available() else "openvino"
        self.backend = backend
        d = locate_stylegan(model_dir)
        if backend == "torch":
            from anonymizer.bank.ir_torch import IRModule

            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            maps = IRModule(d / "MappingNetwork.xml").to(self.device).eval()
            syn = IRModule(d / "SynthesisNetwork.xml").to(self.device).eval()

            def run(net, x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return net(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

            self._map = lambda x: run(maps, x)
            self._syn = lambda x: run(syn, x)
        else:
            core = ov.Core()
            # f32 pinned: OpenVINO's default on a CPU with bf16 (AVX512_BF16, AMX) is bf16, whose renders differ from
            # f32 ones by up to 32 levels: a bank would depend on the CPU that built it
            cfg = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"}
            maps, syn = (core.compile_model(str(d / f"{n}.xml"), "CPU", cfg) for n in ("MappingNetwork",
                                                                                     "SynthesisNetwork"))
            # OpenVINO's compiled graphs take one input at a time
            self._map = lambda x: np.concatenate([maps([x[i:i + 1]])[0] for i in range(len(x))])
            self._syn = lambda x: np.concatenate([syn([x[i:i + 1]])[0] for i in range(len(x))])
        self.truncation = float(truncation)
        self.w_avg = np.zeros(512, np.float32)
        if mean_samples:  # the mean w: from a fixed RNG, so every bank truncates toward the same point
            rng = np.random.default_rng(20240531)
            self.w_avg = self._map(np.stack([rng.standard_normal((1, 512)).astype(np.float32)[0]
                                             for _ in range(mean_samples)])).mean(0)

    def w(self, z: np.ndarray) -> np.ndarray:
        w = self._map(np.asarray(z, np.float32).reshape(1, 512))[0]
        return self.w_avg + self.truncation * (w - self.w_avg)

    def render(self, ws: np.ndarray) -> list[np.ndarray]:
        """One image per w (N × 512, or one w), in one pass where the backend batches."""
        imgs = self._syn(np.asarray(ws, np.float32).reshape(-1, 512))
        return [np.clip((img.transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8) for img in imgs]


def person_z(seed: int, i: int) -> np.ndarray:
    return np.random.default_rng([seed, i]).standard_normal(512).astype(np.float32)


class FaceReader:
    """A rendered face's 68 points (HOG at 256², the landmarker at 512²) and its bank crop."""

    def __init__(self, model_dir: str | None = None, landmarks: str = "dlib_shape68") -> None:
        import dlib

        self._hog = dlib.get_frontal_face_detector()
        self._landmarker = sh.landmarker(landmarks, model_dir)

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(crop, its 68 points) or None when no single clear face is found."""
        return self.read(*reading_sizes(img))

    def read(self, small: np.ndarray, mid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`__call__` on the render's `reading_sizes`."""
        rects = self._hog(small, 0)
        if len(rects) != 1:
            return None
        r = rects[0]
        pts = self._landmarker(mid, Face(2 * r.left(), 2 * r.top(), 2 * r.width(), 2 * r.height(), 1.0, "dlib_hog"))
        if not np.all(np.isfinite(pts)):
            return None
        pts256 = pts / 2.0
        m = sh.crop_matrix(pts256)
        crop = cv2.warpAffine(small, m, (sh.CROP_SIZE, sh.CROP_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT101)
        return crop, sh.apply(m, pts256)


def render_frame(pts68: np.ndarray) -> np.ndarray:
    """The render's square, in the coordinates of a bank crop whose 68 points are `pts68`: FFHQ's alignment (Karras
    et al. 2019, from dlib's 68 points: the eyes' and the mouth's centres) frames each training face so, and the
    generator draws its faces where the alignment put them. Corners: top left, bottom left, bottom right, top right.
    Why: the crop reaches a third of an eye distance below the render's bottom edge, and `FaceReader` fills what lies
    beyond it with the render mirrored: under the chin, the chin again upside down. On the default bank's crops the
    mirror line lies within 4 px (of 256) of this frame's bottom edge for 9 in 10 of the faces where it shows."""
    eye_l, eye_r = pts68[36:42].mean(0), pts68[42:48].mean(0)
    eyes, eye_to_eye = (eye_l + eye_r) / 2, eye_r - eye_l
    eye_to_mouth = (pts68[48] + pts68[54]) / 2 - eyes
    x = eye_to_eye - np.flipud(eye_to_mouth) * (-1, 1)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = np.flipud(x) * (-1, 1)
    c = eyes + 0.1 * eye_to_mouth
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def reading_sizes(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 1024² render at the two sizes `FaceReader` reads (256², 512²): what a GPU actor ships to the readers."""
    return tuple(cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA) for n in (256, 512))


class CandidateProbes:
    """A candidate's readings (columns of CANDIDATES): skin lightness, b, eye white and the skin under the eyes
    (anonymizer.bank.tone), apparent sex and skin darkness from its descriptor, apparent age."""

    def __init__(self, model_dir: str | None = None) -> None:
        from anonymizer.bank.apparent_sex import ApparentSex

        self.probe, self.skin, self.ager = ApparentSex(model_dir), tone.SkinTone(model_dir), AgeReader(model_dir)

    def __call__(self, crop: np.ndarray | None, pts: np.ndarray | None) -> dict[str, float]:
        r = tone.read(crop, pts) if crop is not None else None
        face = sh.face_for(pts) if crop is not None else None
        d = self.probe.describe(crop, face) if face is not None else None
        return {"lightness": np.nan if r is None else r.lightness, "b": np.nan if r is None else r.b,
                "eye_white": np.nan if r is None or r.eye_white is None else r.eye_white,
                "under_eye": np.nan if r is None else r.under_eye,
                "female": np.nan if d is None else self.probe.probability(d),
                "darkness": np.nan if d is None else self.skin.darkness(d),
                "age": float(self.ager.read(crop, [face])[0]) if face is not None else np.nan}


class FaceMaker:
    """Renders bank faces in chunks: [(face id, person, w)] → [(face id, person, crop or None, 68 points or
    None, the candidate's readings (`CandidateProbes`) or None)]; readings only with `readings`. One per
    process (the local engine) or per Ray actor (`render_chunks`); on a GPU cluster its two halves run apart:
    `render` on the GPU actors, `read` on CPU actors."""

    def __init__(self, model_dir: str | None = None, truncation: float = 0.7, threads: int = 1,
                 landmarks: str = "dlib_shape68", backend: str = "auto", readings: bool = False,
                 renders: bool = True, reads: bool = True) -> None:
        self.renderer = Renderer(model_dir, truncation, threads, mean_samples=0, backend=backend) if renders else None
        self.reader = FaceReader(model_dir, landmarks) if reads else None
        self.probes = CandidateProbes(model_dir) if reads and readings else None

    def __call__(self, jobs: Sequence[tuple[str, int, np.ndarray]]) -> list[tuple]:
        return self.read([(face_id, person) for face_id, person, _ in jobs], self.render([w for *_, w in jobs]))

    def render(self, ws: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [reading_sizes(img) for img in self.renderer.render(np.stack(ws))] if len(ws) else []

    def read(self, faces: Sequence[tuple[str, int]], sized: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple]:
        out = []
        for (face_id, person), (small, mid) in zip(faces, sized):
            crop, pts = self.reader.read(small, mid) or (None, None)
            out.append((face_id, person, crop, pts, self.probes(crop, pts) if self.probes else None))
        return out


def progress(renders: Iterator[tuple], total: int, what: str) -> Iterator[tuple]:
    """The renders, with a log line every PROGRESS_EVERY and at the last: a build runs for minutes."""
    for j, rendered in enumerate(renders, start=1):
        if j % PROGRESS_EVERY == 0 or j == total:
            log.info("stylegan bank: %d of %d %s rendered", j, total, what)
        yield rendered


def render_chunks(jobs: Sequence[tuple[str, int, np.ndarray]], maker_args: tuple, engine: str = "local",
                  workers: int | None = None, chunk: int = 4, ray_address: str | None = None,
                  gpu_chunk: int = 16, readings: bool = False) -> Iterator[tuple]:
    """Every job rendered and read (`FaceMaker`), in the jobs' order. `local`: one FaceMaker in this process;
    `ray`: where the cluster has GPUs (and the backend, the 5th of `maker_args`, is not `openvino`), one actor
    per GPU renders `gpu_chunk` faces per pass through torch and `workers` CPU actors (default: one per CPU
    the GPU actors leave) read them: reading takes several times a GPU's render time per face. Else a pool of
    `workers` FaceMaker actors (default one per CPU), rendering through OpenVINO (Ray hides the GPUs from an
    actor that asked for none). Chunks are handed out as actors free up, results taken back in order
    (memory: the chunks in flight)."""
    if engine not in ("local", "ray"):
        raise ValueError(f"stylegan bank: unknown engine {engine!r}; known: local, ray")
    if not jobs:
        return
    if engine == "local":
        maker = FaceMaker(*maker_args, readings=readings)
        size = gpu_chunk if maker.renderer.backend == "torch" else chunk
        for i in range(0, len(jobs), size):
            yield from maker(list(jobs[i:i + size]))
        return
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 logging_level="WARNING", ignore_reinit_error=True)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if maker_args[4:5] != ("openvino",) else 0
    cpus = int(resources.get("CPU", 1))
    size = gpu_chunk if gpus else chunk
    chunks = [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]
    env = {k: os.environ[k] for k in ("ANONYMIZER_MODEL_DIR",) if k in os.environ}
    actor = ray.remote(max_restarts=2, max_task_retries=2, runtime_env={"env_vars": env})(FaceMaker)
    if not gpus:
        n = max(1, min(len(chunks), workers or cpus))
        actors = [actor.options(num_cpus=1).remote(*maker_args, readings=readings) for _ in range(n)]
        try:
            for rendered in ActorPool(actors).map(lambda a, c: a.__call__.remote(c), chunks):
                yield from rendered
        finally:
            for a in actors:
                ray.kill(a)
        return
    renderers = [actor.options(num_cpus=1, num_gpus=1).remote(*maker_args, reads=False) for _ in range(gpus)]
    readers = [actor.options(num_cpus=1).remote(*maker_args, readings=readings, renders=False)
               for _ in range(max(1, min(len(chunks), workers or cpus - gpus)))]
    log.info("stylegan bank: %d GPU actor%s render%s, %d CPU actors read", gpus, "s" * (gpus > 1),
             "" if gpus > 1 else "s", len(readers))
    in_flight: deque = deque()
    try:
        for i, c in enumerate(chunks):
            sized = renderers[i % gpus].render.remote([w for *_, w in c])
            in_flight.append(readers[i % len(readers)].read.remote([(f, p) for f, p, _ in c], sized))
            while len(in_flight) > 2 * (gpus + len(readers)):
                yield from ray.get(in_flight.popleft())
        while in_flight:
            yield from ray.get(in_flight.popleft())
    finally:
        for a in renderers + readers:
            ray.kill(a)


def fit_directions(ws: np.ndarray, feats: dict[str, np.ndarray], ridge: float = 1.0) -> dict[str, tuple[np.ndarray, float]]:
    """Per feature: (unit direction in w, feature change per unit step), by ridge regression of the feature
    on w (λ = `ridge` × the mean eigenvalue of the centred Gram matrix)."""
    w = ws - ws.mean(0)
    gram = w.T @ w
    lam = ridge * np.trace(gram) / gram.shape[0]
    out = {}
    for name, y in feats.items():
        yc = y - y.mean()
        beta = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), w.T @ yc)
        d = beta / max(np.linalg.norm(beta), 1e-12)
        proj = w @ d
        slope = float((proj @ yc) / max(proj @ proj, 1e-12))
        out[name] = (d, slope)
    return out


def candidate_tones(out: Path, people: dict[int, tuple[str, str]], w_of: Callable[[int], np.ndarray], maker_args: tuple,
                    engine: str, workers: int | None, ray_address: str | None, chunk: int = 32
                    ) -> tuple[dict[int, float], dict[int, str | None], dict[int, float]]:
    """(person → how dark their skin reads (anonymizer.bank.tone.SkinTone), person → their apparent sex
    (anonymizer.bank.apparent_sex; None: undecided), person → their apparent age in years
    (anonymizer.measure.apparent_age)), the probes on the descriptor of their first render
    (w: `w_of(person)`), for `people` (person → (the band whose centre their w was moved to, a fingerprint of
    that move: `moved`), ("", "") for none). Left out: those without one clear face, and those whose eyes show no
    white or a lens below them (sunglasses, a squint: a bank face should carry open eyes). Readings are kept in
    `out`/CANDIDATES as they come, so an interrupted build does not render them again; a reading made with
    another move (a build resumed with other candidates), or without every column, is made again."""
    from anonymizer.bank.apparent_sex import ApparentSex

    probe = ApparentSex(maker_args[0])
    path = out / CANDIDATES
    cols = ["person", "lightness", "b", "eye_white", "under_eye", "female", "darkness", "age", "centre", "move"]

    def made_with(r: dict) -> tuple[str, ...]:  # a table without the columns (an older build's) moved nobody
        return tuple(v if isinstance(v := r.get(c), str) else "" for c in ("centre", "move"))

    rows = pd.read_parquet(path).to_dict("records") if path.is_file() else []
    rows = [r for r in rows if "under_eye" in r  # a row without every reading (an older build's) is read again
            and people.get(int(r["person"]), made_with(r)) == made_with(r)]
    todo = sorted(set(people) - {int(r["person"]) for r in rows})
    jobs = [(f"c{p:06d}", p, w_of(p)) for p in todo]

    def keep() -> None:
        tmp = path.with_name(path.name + ".tmp")
        pd.DataFrame(rows, columns=cols).to_parquet(tmp, index=False)
        os.replace(tmp, path)

    renders = render_chunks(jobs, maker_args, engine, workers, ray_address=ray_address, readings=True)
    for j, (_, person, _, _, read) in enumerate(progress(renders, len(jobs), "candidates"), start=1):
        rows.append({"person": person, **read, "centre": people[person][0], "move": people[person][1]})
        if j % chunk == 0 or j == len(jobs):
            keep()
    seen = [r for r in rows if int(r["person"]) in people and np.isfinite(r["eye_white"])]
    return ({int(r["person"]): float(r["darkness"]) for r in seen},
            {int(r["person"]): probe.decide(float(r.get("female", np.nan))) for r in seen},
            {int(r["person"]): float(r["age"]) for r in seen})


def choose_people(tones: dict[int, float], sexes: dict[int, str | None], ages: dict[int, float], n: int,
                  rng: np.random.Generator) -> list[int]:
    """The n people a bank keeps: first each age group's AGE_SHARES (as many as its candidates allow), then
    the rest, all spread over the skin-tone bands (anonymizer.bank.tone.spread over DARKNESS_BANDS) with men
    and women in turn. FFHQ's people, truncated toward the mean w, are mostly adults in their twenties to
    forties: without the shares a 256-person bank held 7 people over 60 and 12 children, too few for an
    operator matching age (`match_age`) to choose from by pose."""
    chosen: list[int] = []
    for group, share in AGE_SHARES.items():
        members = {p: t for p, t in tones.items() if age_group(ages[p]) == group or p in chosen}
        chosen = tone.spread(members, len(chosen) + round(share * n), rng, sexes, tone.DARKNESS_BANDS, chosen)
    return tone.spread(tones, n, rng, sexes, tone.DARKNESS_BANDS, chosen)


def around_short_bands(tones: dict[int, float], n: int, w_of: Callable[[int], np.ndarray], w_avg: np.ndarray,
                       first: int, centre_min: int = CENTRE_MIN) -> dict[int, tuple[str, np.ndarray]]:
    """People `first`, `first` + 1, … to render around the centres of the skin-tone bands (DARKNESS_BANDS) whose
    candidates (`tones`) fall short of their share of `n`: CENTRED_PER_MISSING per person missing, each as the
    truncated w of its own z moved by (the band's centre − the mean w). Person → (band, that move).
    Truncating toward FFHQ's mean w, which is light-skinned, is what makes dark skin rare (about 2 % of
    candidates); around a band's centre the same spread of faces reads mostly in that band (multi-modal
    truncation, Mokady et al. 2022). The centre is the mean w of the band's candidates: an average of
    `centre_min` people or more, a face of none of them. A band with fewer is left short (the centre of the
    candidates nearest it, most of them light, moved the mean w too little to change whom it renders)."""
    around: dict[int, tuple[str, np.ndarray]] = {}
    for name, missing in tone.shortfall(tones.values(), n, tone.DARKNESS_BANDS).items():
        members = [p for p in sorted(tones) if tone.band(tones[p], tone.DARKNESS_BANDS) == name]
        if len(members) < centre_min:
            log.info("stylegan bank: %d %s-skinned candidates, %d needed for a centre: the band stays short",
                     len(members), name, centre_min)
            continue
        move = np.mean([w_of(p) for p in members], 0) - w_avg
        for _ in range(CENTRED_PER_MISSING * missing):
            around[first + len(around)] = (name, move)
    return around


def age_counts(ages) -> dict[str, int]:
    counts = Counter(AGE_GROUP_NAMES[age_group(a)] for a in ages)
    return {name: counts[name] for name in AGE_GROUP_NAMES}


def moved(move: np.ndarray) -> str:
    """A short fingerprint of a move in w: what a candidate's recorded reading was made with."""
    return hashlib.sha256(np.asarray(move, np.float32).tobytes()).hexdigest()[:16]


def recorded_sexes(bank, probe) -> dict[str, str | None]:
    """Each candidate's apparent sex (anonymizer.bank.apparent_sex) as this bank's build read it on their first
    render, by bank identity; empty where `probe` did not make those readings."""
    path = bank.root / CANDIDATES
    summary = bank.manifest.get("summary", {}).get("candidates", {})
    if summary.get("apparent_sex_probe") != probe.sha256 or not path.is_file():
        return {}
    rows = pd.read_parquet(path, columns=["person", "female"])
    return {person_name(int(p)): probe.decide(float(f)) for p, f in zip(rows["person"], rows["female"])}


def person_name(person: int) -> str:
    """A StyleGAN bank's name for virtual person `person` (its index's identity)."""
    return f"s{person:06d}"


def build_from_stylegan(out: str | os.PathLike, n: int, seed: int = 0, views: Sequence[dict] = DEFAULT_VIEWS,
                        truncation: float = 0.7, fit_min: int = 32, max_step: float = 1.0, threads: int = 1,
                        model_dir: str | None = None, part_size: int = 64, engine: str = "local",
                        workers: int | None = None, ray_address: str | None = None,
                        landmarks: str = "dlib_shape68", backend: str = "auto", candidates: int | None = None,
                        centre_min: int = CENTRE_MIN) -> Path:
    """A bank of `n` virtual people, each rendered once and then at `views` (see the module doc: views need
    `fit_min` people to fit directions from); resumable. A view's step along its direction is capped at
    `max_step` times the people's median distance from the mean w (beyond it faces turn odd). Rendering runs
    in this process (`engine="local"`) or fans out over `workers` Ray actors (`"ray"`); the bank is the same.
    `landmarks`: the landmarker (anonymizer.bank.shape.LANDMARKERS) the operator will use with this bank.
    `backend` (Renderer): where the faces render; w is always mapped here through OpenVINO, so a bank's
    people are the same wherever they render. Returns the bank directory.

    Who is in it: `candidates` people (default CANDIDATES_PER_PERSON × n; 0 or n: people 0 … n−1) are
    rendered once, then more around the centre of each skin-tone band short of its share (`around_short_bands`),
    and the n kept (`choose_people`), none of whom reads as wearing headwear (anonymizer.bank.headwear), hold
    each age group's AGE_SHARES where the candidates allow and are spread over the bands
    (anonymizer.bank.tone.spread over DARKNESS_BANDS, as the skin probe reads their descriptors), men and women
    in turn within each band. FFHQ's people, truncated toward the mean w, are mostly light-skinned, and a
    dark-skinned person given a light-skinned bank face looks recoloured, not real; an operator that matches
    sex (`match_sex`) or age (`match_age`) draws from one sex's or one age group's people."""
    out = Path(out)
    writer = BankWriter(out, source="MobileStyleGAN (StyleGAN2-FFHQ distilled)", licence=LICENCE,
                        licence_class="non-commercial", part_size=part_size, model_dir=model_dir)
    renderer = Renderer(model_dir, truncation, threads, backend="openvino")  # w only: mapping and mean w
    maker_args = (model_dir, truncation, threads, landmarks, backend)
    missed = 0

    def make_all(jobs: list[tuple[str, int, np.ndarray]]) -> None:
        nonlocal missed
        todo = [j for j in jobs if not writer.has(j[0])]
        renders = render_chunks(todo, maker_args, engine, workers, ray_address=ray_address)
        for face_id, person, crop, pts, _ in progress(renders, len(todo), "bank faces"):
            if crop is None:
                log.info("stylegan %s: no single clear face, skipped", face_id)
                missed += 1
            else:
                writer.add(face_id, person_name(person), crop, pts, sh.features(pts))

    candidates = CANDIDATES_PER_PERSON * n if candidates is None else candidates
    chosen = list(range(n))
    tones: dict[int, float] = {}
    around: dict[int, tuple[str, np.ndarray]] = {}

    def person_w(p: int) -> np.ndarray:
        w = renderer.w(person_z(seed, p))
        return w + around[p][1] if p in around else w

    if candidates > n:
        run = (maker_args, engine, workers, ray_address)
        tones, sexes, ages = candidate_tones(out, dict.fromkeys(range(candidates), ("", "")), person_w, *run)
        around = around_short_bands(tones, n, person_w, renderer.w_avg, candidates, centre_min)
        if around:
            more = candidate_tones(out, {p: (name, moved(m)) for p, (name, m) in around.items()}, person_w, *run)
            tones, sexes, ages = {**tones, **more[0]}, {**sexes, **more[1]}, {**ages, **more[2]}
        headwear = Headwear(model_dir, FILES["MappingNetwork.bin"])
        covered = {p for p in [*range(candidates), *around]
                   if headwear.covers(person_w(p)) or (p < candidates and headwear.labelled(seed, p))}
        chosen = choose_people({p: t for p, t in tones.items() if p not in covered}, sexes, ages, n,
                               np.random.default_rng([seed, 1]))
        unseen = [p for p in range(candidates) if p not in tones and p not in covered]  # eyes without whites
        chosen += unseen[:n - len(chosen)]
    writer.only(person_name(i) for i in chosen)
    base = {i: person_w(i) for i in chosen}
    make_all([(f"{person_name(i)}v0", i, base[i]) for i in chosen])
    summary: dict = {"people": len(chosen), "missed_renders": 0, "views": [], "directions": None}
    if tones:
        centred: dict[str, list[int]] = {}
        for p, (name, _) in around.items():
            centred.setdefault(name, []).append(p)
        summary["candidates"] = {"rendered": candidates + len(around), "eye_whites_seen": len(tones),
                                 "chosen": len(chosen),
                                 "around_band_centres": {name: {"rendered": len(ps), "bands": tone.band_counts(
                                     (tones[p] for p in ps if p in tones), tone.DARKNESS_BANDS)}
                                     for name, ps in centred.items()},
                                 "bands_of_candidates": tone.band_counts(tones.values(), tone.DARKNESS_BANDS),
                                 "bands_chosen": tone.band_counts((tones[i] for i in chosen), tone.DARKNESS_BANDS),
                                 "apparent_sex_chosen": dict(Counter(sexes.get(i) or "undecided" for i in chosen)),
                                 "headwear_left_out": len(covered & set(tones)),
                                 "age_groups_of_candidates": age_counts(ages.values()),
                                 "age_groups_chosen": age_counts(ages[i] for i in chosen if i in ages),
                                 "apparent_sex_probe": describe("apparent_sex", model_dir)["sha256"],
                                 "skin_tone_probe": describe("skin_tone", model_dir)["sha256"],
                                 "headwear_probe": headwear.sha256,
                                 "apparent_age_reader": describe("apparent_age", model_dir)["sha256"]}
    extra: tuple[str, ...] = ()
    rows = writer.rows()
    v0 = rows[rows["face_id"].str.endswith("v0")]
    if views and len(v0) < fit_min:
        log.warning("stylegan bank %s: %d people rendered, %d needed to fit pose/expression directions: no views",
                    out, len(v0), fit_min)
    elif views:
        dpath = out / "directions.npz"
        people = [int(f[1:7]) for f in v0["face_id"]]
        if dpath.is_file():
            saved = np.load(dpath)
            dirs = {k: (saved[f"{k}_direction"], float(saved[f"{k}_slope"])) for k in DIRECTION_FEATURES}
        else:
            ws = np.stack([base[p] for p in people])
            dirs = fit_directions(ws, {k: v0[k].to_numpy(np.float64) for k in DIRECTION_FEATURES})
            np.savez(dpath, **{f"{k}_direction": d for k, (d, _) in dirs.items()},
                     **{f"{k}_slope": np.float64(s) for k, (_, s) in dirs.items()})
        extra = ("directions.npz",)
        summary["directions"] = {k: {"slope_per_unit_step": s} for k, (_, s) in dirs.items()}
        measured = {int(f[1:7]): r for f, r in zip(v0["face_id"], v0.to_dict("records"))}
        cap = max_step * float(np.median([np.linalg.norm(base[p] - renderer.w_avg) for p in people]))
        jobs = []
        for vi, view in enumerate(views, start=1):
            (feat, target), = view.items()
            if feat not in dirs:
                raise ValueError(f"stylegan view {view}: feature must be one of {DIRECTION_FEATURES}")
            d, slope = dirs[feat]
            for p in people:
                step = np.clip((float(target) - measured[p][feat]) / (slope if abs(slope) > 1e-9 else 1e-9),
                               -cap, cap)
                jobs.append((f"{person_name(p)}v{vi}", p, base[p] + step * d))
        make_all(jobs)
        summary["views"] = list(views)
    summary["missed_renders"] = missed
    if tones:
        extra = (*extra, CANDIDATES)
    build = {"kind": "stylegan", "n": n, "seed": seed, "candidates": candidates, "centre_min": centre_min,
             "centred_per_missing": CENTRED_PER_MISSING, "truncation": truncation,
             "age_shares": {AGE_GROUP_NAMES[g]: share for g, share in AGE_SHARES.items()},
             "views": list(views), "fit_min": fit_min, "max_step": max_step, "model_files": FILES, "landmarks": landmarks,
             "crop_size": sh.CROP_SIZE}
    return writer.finish(None, build, extra_files=extra, summary=summary)
