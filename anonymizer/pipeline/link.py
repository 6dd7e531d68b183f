"""Keyed runs: link each person's faces across the dataset, then give each person a virtual identity.

Two passes before anonymization:

1. Per shard, on the executors (Ray actors or local threads), `LinkWorker`: read, decode, detect, and embed
   every face of at least `anonymization.linking.min_face_px` with the linking recognizer, and, where the
   operator matches apparent sex (`match_sex`), skin tone (`tone_reading: descriptor`) or age (`match_age`),
   read each such face's (anonymizer.bank.apparent_sex, anonymizer.bank.tone.SkinTone,
   anonymizer.measure.apparent_age). The
   detections go to the shard's staging folder (boxes, as faces.parquet holds them); the embeddings and
   readings are sealed under the identity key (AES-256-GCM, anonymizer.identity.state): real people's
   biometric data never rests in plaintext. The anonymization pass reuses the detections: nothing is
   detected twice.
2. On the driver, `link`: shard by shard in the plan's order, the linker (anonymizer.identity.Linker)
   clusters the embeddings (its memory grows with people, not with faces), then a second read-only pass
   assigns every face to its person's final centroid. A person without a label yet takes the one their
   faces of this run read as on average (anonymizer.bank.tone.reads_as: with skin tone matched too, an
   undecided reading gives the sex it leans to; none where sex alone is matched and undecided), kept with
   them from then on. A person's virtual identity is HMAC-SHA256 of the person
   id under the identity key, reduced to the number of the operator's identities in the person's pool
   (`pool_for`: those that read alike; anonymizer.identity.keys): one person, one virtual person of their
   apparent sex, skin tone and age group, in this run and the next. Each shard's `link.parquet` carries it per face,
   for the anonymization pass.

The linker's state (the people known so far) is staged sealed, and goes to `<vault>/identities` when the run
publishes: the next run with the same key and vault links its faces to the same people. Without a vault
the people are linked within the run only. Faces too small to embed get no identity (a face per face).
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pyarrow as pa

from anonymizer import imageio
from anonymizer.anonymize.bankface import AGE_MIN_PEOPLE
from anonymizer.bank.tone import MARKS, UNMATCHED, by_descriptor, in_words, reads_as, split_age
from anonymizer.components import batch_detection, virtual_identities
from anonymizer.detect import build_ensemble
from anonymizer.identity import MEASURED_THRESHOLDS, STATE_NAME, Linker, identity_key_from, virtual_identity
from anonymizer.identity.state import seal, unseal
from anonymizer.logs import event
from anonymizer.measure.encoder import build_encoder
from anonymizer.policy import Policy, PolicyError
from anonymizer.pipeline.shard import DETECT_TOGETHER, LINK_SCHEMA, LINKS, Fetched, detect_together, fetch, shard_dir
from anonymizer.storage import Location
from anonymizer.vault.vault import IDENTITIES

DETECTIONS = "detections.parquet"  # LINK_SCHEMA without virtual identities: the pass's own output
EMBEDDINGS = "embeddings.sealed"   # the embedded faces' vectors and readings (sex, tone, age), in DETECTIONS' row order
PERSONS = "persons.parquet"        # the person each embedded face joined in the linker's first pass, then its final one
DONE = "_DONE"                     # in staging/link: the driver's linking finished (a resumed run skips it)


def threshold_of(policy: Policy) -> float:
    """The linking distance: the policy's, else the recognizer's measured one."""
    linking = policy.anonymization.linking
    if linking.threshold is not None:
        return linking.threshold
    if linking.encoder.name not in MEASURED_THRESHOLDS:
        raise PolicyError(f"policy {policy.name}: key 'anonymization.linking.threshold': no measured linking "
                          f"distance for recognizer {linking.encoder.name!r} (known: "
                          f"{', '.join(MEASURED_THRESHOLDS)}); set one (`anonymizer eval linking` measures it)")
    return MEASURED_THRESHOLDS[linking.encoder.name]


def identity_location(vault: Location | None) -> Location | None:
    return vault.child(IDENTITIES) if vault is not None else None


def matches_sex(policy: Policy) -> bool:
    """Whether the operator gives bank people of the face's apparent sex (the `bank` operator's `match_sex`)."""
    return bool(policy.anonymization.operator.params.get("match_sex"))


def matches_age(policy: Policy) -> bool:
    """Whether the operator gives bank people of the face's apparent age group (the `bank` operator's `match_age`)."""
    return bool(policy.anonymization.operator.params.get("match_age"))


def matches_tone(policy: Policy) -> bool:
    """Whether the operator gives bank people of the person's skin tone, as the descriptor reads it (the `bank`
    operator's `tone_reading: descriptor`; a photo's ITA reading is not the person's, so a keyed run ignores it)."""
    return by_descriptor(dict(policy.anonymization.operator.params))


class LinkWorker:
    """The linking pass over one shard: detections in the clear, embeddings sealed."""

    MARKER = "_LINKED"

    def __init__(self, policy: Policy, source: Location, staging: Location, worker: str = "local",
                 vault=None, identity_key: str = "") -> None:
        linking = policy.anonymization.linking
        self.detector = build_ensemble(policy.detection, policy.model_dir)
        self.batch_detection = batch_detection(policy)
        self.encoder = build_encoder(linking.encoder.name, linking.encoder.params, policy.model_dir)
        self.min_face_px, self.max_pixels = linking.min_face_px, policy.output.max_pixels
        self.source, self.staging, self.worker = source, staging, worker
        self.key = identity_key_from(identity_key)
        self.sex = self.tone = self.age = None
        if matches_age(policy):
            from anonymizer.measure.apparent_age import AgeReader

            self.age = AgeReader(policy.model_dir)
        if matches_sex(policy):
            from anonymizer.bank.apparent_sex import ApparentSex

            self.sex = ApparentSex(policy.model_dir)
        if matches_tone(policy):
            from anonymizer.bank.tone import SkinTone

            self.tone = SkinTone(policy.model_dir)

    def readings(self, rgb: np.ndarray, faces: list) -> list[tuple[float, float, float]]:
        """(P(reads as a woman's), darkness, apparent age) per face, NaN where the run does not match it: both
        probes read dlib's descriptor, computed once."""
        ages = self.age.read(rgb, faces) if self.age is not None and faces else [np.nan] * len(faces)
        reader = self.sex or self.tone
        if reader is None:
            return [(np.nan, np.nan, float(a)) for a in ages]
        out = []
        for f, age in zip(faces, ages):
            d = reader.describe(rgb, f)
            out.append((self.sex.probability(d) if self.sex else np.nan,
                        self.tone.darkness(d) if self.tone else np.nan, float(age)))
        return out

    def run_shard(self, shard_id: int, keys: list[str]) -> dict:
        t0 = time.perf_counter()
        rows, vectors, reads, unreadable = [], [], [], 0
        together: dict[str, Fetched | str] = {}
        for n, key in enumerate(keys):
            if self.batch_detection and n % DETECT_TOGETHER == 0:
                together = detect_together(self.source, keys[n:n + DETECT_TOGETHER], self.max_pixels, self.detector,
                                           self.worker)
            fetched = together.pop(key, None) or fetch(self.source, key, self.max_pixels)
            try:
                if isinstance(fetched, str):
                    raise imageio.ImageError(fetched)
                data = fetched.data
                imageio.check_extension(key, data, self.max_pixels)
                rgb = (fetched.image or imageio.decode(data, self.max_pixels)).rgb
                faces = self.detector.detect(rgb) if fetched.faces is None else fetched.faces
                big = [f for f in faces if f.size >= self.min_face_px]
                found = self.encoder.embed(rgb, self.encoder.align(rgb, big)) if big else None
                read = self.readings(rgb, big)
            except Exception:  # noqa: BLE001 - the anonymization pass reads it again and records why it fails
                unreadable += 1
                continue
            if found is not None:
                vectors.append(found)
                reads += read
            sha = hashlib.sha256(data).hexdigest()
            rows += [{"key": key, "sha256": sha, "face": i, "x": f.x, "y": f.y, "w": f.w, "h": f.h, "score": f.score,
                      "detector": f.detector, "embedded": f.size >= self.min_face_px,
                      "landmarks": None if f.landmarks is None else np.asarray(f.landmarks, float).ravel().tolist()}
                     for i, f in enumerate(faces)] or [{"key": key, "sha256": sha, "face": None, "embedded": False}]
        out = shard_dir(self.staging, shard_id)
        table = pa.Table.from_pylist(rows, schema=LINK_SCHEMA.remove(LINK_SCHEMA.get_field_index("virtual_identity"))
                                     .append(pa.field("embedded", pa.bool_())))
        out.write_table(DETECTIONS, table)
        emb = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
        buf = io.BytesIO()
        reads = np.asarray(reads, np.float64).reshape(-1, 3)
        np.savez(buf, embeddings=emb, p_woman=reads[:, 0], darkness=reads[:, 1], age=reads[:, 2])
        out.write_bytes(EMBEDDINGS, seal(buf.getvalue(), self.key))
        summary = {"shard": shard_id, "images": len(keys), "unreadable": unreadable, "faces": sum(
            r["face"] is not None for r in rows), "embedded": int(len(emb)), "seconds": time.perf_counter() - t0,
                   "worker": self.worker}
        out.write_bytes(self.MARKER, json.dumps(summary).encode())
        return summary


def _embeddings(staging: Location, shard_id: int, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, readings: per embedded face P(reads as a woman's), darkness and apparent age, NaN where not
    read)."""
    where = shard_dir(staging, shard_id)
    with np.load(io.BytesIO(unseal(where.read_bytes(EMBEDDINGS), key, f"{where.uri}/{EMBEDDINGS}")),
                 allow_pickle=False) as z:
        age = z["age"] if "age" in z.files else np.full(len(z["p_woman"]), np.nan)
        return z["embeddings"], np.stack([z["p_woman"], z["darkness"], age], axis=1)


def pool_for(label: str | None, labels: list[str | None]) -> list[int]:
    """The virtual identities a person labelled `label` may get (`labels`: each virtual identity's, from
    the operator): those of the same sex (any, for UNMATCHED; for a person leaning to one, f or m, those of
    that sex or of neither) in the nearest skin-tone band the operator has for it; a label without a tone
    band, those of the same sex; a person without a label, or where nobody is left, all of them. Of those,
    with an age group (`split_age`), the ones of that group where at least AGE_MIN_PEOPLE are (skin tone
    first, as the operator's `match_age`)."""
    label, age = split_age(label)
    ages = [split_age(other)[1] for other in labels]
    pool = _alike(label, [split_age(other)[0] for other in labels])
    mine = [i for i in pool if ages[i] == age]
    return mine if age is not None and len(mine) >= AGE_MIN_PEOPLE else pool


def _alike(label: str | None, labels: list[str | None]) -> list[int]:
    sex, tone = (label[0], label[1:]) if label else (None, "")

    def having(tones: set[str]) -> list[int]:
        sexes = {sex.upper(), UNMATCHED} if sex and sex.islower() else {sex}
        return [i for i, other in enumerate(labels)
                if other and (sex == UNMATCHED or other[0] in sexes) and other[1:] in tones]

    if label and len(tone) == 1 and tone in MARKS:
        for distance in range(len(MARKS)):
            near = having({t for t in MARKS if abs(MARKS.index(t) - MARKS.index(tone)) == distance})
            if near:
                return near
    alike = having({"", *MARKS}) if label and sex != UNMATCHED else []
    return alike or list(range(len(labels)))


def link(policy: Policy, staging: Location, shards: int, identity_key: str, vault: Location | None,
         space: str) -> dict:
    """Cluster the linking pass's embeddings into people, write each shard's `link.parquet`, and stage the
    linker's sealed state; returns what the report says of it (counts only). Idempotent for a resumed run."""
    done = staging.child("link")
    if done.exists(DONE):
        return json.loads(done.read_bytes(DONE))
    t0 = time.perf_counter()
    key = identity_key_from(identity_key)
    encoder = policy.anonymization.linking.encoder.name
    where = identity_location(vault)
    linker = (Linker.open(where, key, threshold_of(policy), encoder, space=space) if where is not None
              else Linker(threshold_of(policy), encoder, space))
    started_from = _state_digest(where)
    known = linker.persons
    for i in range(shards):  # first pass: people form; each face's first person is kept for the second pass
        emb, _ = _embeddings(staging, i, key)
        shard_dir(staging, i).write_table(PERSONS, pa.table({"person": pa.array(linker.add(emb) if len(emb) else [],
                                                                                pa.string())}))
    read: dict[str, np.ndarray] = {}  # person -> [sums of P(woman), darkness, age; faces read]: grows with people
    for i in range(shards):  # second pass: each face to its person's final centroid (or its first person)
        emb, readings = _embeddings(staging, i, key)
        first = shard_dir(staging, i).read_table(PERSONS).column("person").to_pylist()
        persons = [again or once for again, once in zip(linker.assign(emb) if len(emb) else [], first)]
        shard_dir(staging, i).write_table(PERSONS, pa.table({"person": pa.array(persons, pa.string())}))
        for person, r in zip(persons, readings):
            if not np.isnan(r).all():
                read.setdefault(person, np.zeros(4))[:] += (*r, 1)
    by_sex, by_tone, by_age = matches_sex(policy), matches_tone(policy), matches_age(policy)
    if by_sex or by_tone or by_age:
        decide = lean = lambda p: None  # noqa: E731 - sex not matched: never decided
        if by_sex:
            from anonymizer.bank.apparent_sex import ApparentSex

            probe = ApparentSex(policy.model_dir)
            decide, lean = probe.decide, probe.lean
        for person, (p_woman, darkness, age, count) in read.items():
            p = p_woman / count
            linker.settle(person, reads_as(decide(p), darkness / count, by_sex, by_tone, lean(p), age / count, by_age))
    labels = virtual_identities(policy)
    n, pools = len(labels), {}
    assigned = 0
    for i in range(shards):  # the virtual identities, per face
        persons = iter(shard_dir(staging, i).read_table(PERSONS).column("person").to_pylist())
        table = shard_dir(staging, i).read_table(DETECTIONS)
        ids = []
        for embedded in table.column("embedded").to_pylist():
            if not embedded:
                ids.append(None)
                continue
            person = next(persons)
            label = linker.label(person) if by_sex or by_tone or by_age else None
            if label not in pools:
                pools[label] = pool_for(label, labels)
            mine = pools[label]
            ids.append(mine[virtual_identity(key, person, len(mine))])
        assigned += sum(v is not None for v in ids)
        shard_dir(staging, i).write_table(LINKS, table.drop_columns(["embedded"]).append_column(
            "virtual_identity", pa.array(ids, pa.int32())).select(LINK_SCHEMA.names).cast(LINK_SCHEMA))
    done.write_bytes(STATE_NAME, linker.seal(key))
    summary = {"recognizer": encoder, "threshold": linker.threshold, "faces_linked": assigned,
               "people": linker.persons, "people_new": linker.persons - known, "people_known_before": known,
               "virtual_identities": n, "persisted": where.uri if where is not None else None,
               "started_from": started_from,
               "read_as": _read_as(linker, read) if by_sex or by_tone or by_age else None,
               "seconds": round(time.perf_counter() - t0, 3)}
    done.write_bytes(DONE, json.dumps(summary).encode())
    event("link", **summary)
    return summary


def _read_as(linker: Linker, read: dict[str, np.ndarray]) -> dict[str, int]:
    """How many of this run's people read as each apparent sex, skin tone and age group (counts only: the labels
    stay sealed)."""
    labels = [in_words(label) if (label := linker.label(person)) else "undecided" for person in read]
    return {label: labels.count(label) for label in sorted(set(labels))}


def _state_digest(where: Location | None) -> str | None:
    """The sha256 of the saved state's (sealed) bytes, None where there is none."""
    if where is None or not where.exists(STATE_NAME):
        return None
    return hashlib.sha256(where.read_bytes(STATE_NAME)).hexdigest()


def commit_state(staging: Location, vault: Location | None) -> bool:
    """After the release is published: the people this run linked become known to the next run. Only over
    the state this run started from: a later run's state (another run committed meanwhile, and this one is
    re-run) is never replaced by an older one. Returns whether the state was written."""
    where, done = identity_location(vault), staging.child("link")
    if where is None or not done.exists(STATE_NAME):
        return False
    current = _state_digest(where)
    staged = hashlib.sha256(done.read_bytes(STATE_NAME)).hexdigest()
    if current not in (json.loads(done.read_bytes(DONE)).get("started_from"), staged):
        event("link.state_kept", reason="the identity state changed since this run linked its faces", where=where.uri)
        return False
    where.write_bytes(STATE_NAME, done.read_bytes(STATE_NAME))
    return True
