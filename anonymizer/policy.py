"""The policy file: which components run, with which parameters, and the thresholds a release must meet.

A policy may `extends:` another (an embedded profile's name, or a path relative to the file) and state only
what differs. Merging: mappings merge key by key, lists and scalars replace, and a component mapping whose
`name` differs from the parent's replaces it whole (a blur's params mean nothing to a pixelate). `name` is
never inherited: every file names itself. The merged result is validated, and `Policy.text` is it as
canonical YAML: what the report shows and `Policy.sha256` hashes is what runs, not what a file happened to say.

Policy files are untrusted input: the loader refuses duplicate keys (YAML silently keeps the last one),
aliases (a billion-laughs file expands exponentially when walked), merge keys, keys that are not strings,
deep nesting, and files over a size cap.
Component names and their params are checked against the registries by anonymizer.policy_check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

MAX_POLICY_BYTES = 256 * 1024  # the largest profile is ~8 KiB
MAX_NESTING = 24  # mapping/sequence depth; a policy needs about 6
MAX_EXTENDS = 8  # files in one extends chain


class PolicyError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DetectorComponent(Component):
    weight: float = Field(1.0, gt=0)  # its vote when detections are fused (merge: wbf); unused by nms


class Focus(_Strict):
    """Upscaled passes look only near what the whole-image passes saw (anonymizer.detect.base.focus_windows):
    a square of `reach` times each seen face's longer side plus `margin` px a side around its centre. A
    detector's 1x faces count from its own score threshold, or from its entry in `proposal_scores` where that
    is lower (a weak peak still marks a place worth a closer look); an entry for a detector the policy does
    not run is unused, so a policy that restates the detector list may keep the inherited entries."""

    reach: float = Field(3.0, ge=1.0)
    margin: int = Field(16, ge=0)
    proposal_scores: dict[str, float] = Field(default_factory=dict)


class Detection(_Strict):
    detectors: list[DetectorComponent] = Field(min_length=1)
    merge: Literal["nms", "wbf"] = "nms"  # nms: union, duplicates suppressed; wbf: weighted box fusion
    merge_iou: float = Field(0.3, ge=0, le=1)
    min_score: float = Field(0.0, ge=0, le=1)  # wbf: the fused (vote-weighted) score a face needs
    vote_per_scale: bool = False  # wbf: each scale of a detector votes on its own
    focus: Focus | None = None  # None: every scale runs on the whole image
    auditor: Component


class Region(_Strict):
    expand: float = Field(1.35, ge=1.0, le=3.0)
    shape: Literal["ellipse", "box"] = "ellipse"
    feather: float = Field(0.15, ge=0.0, le=0.5)


class Linking(_Strict):
    """How a keyed run (`--identity-key`) tells people apart: the recognizer whose embeddings link one
    person's faces across images, the distance that links them (None: the recognizer's measured linking
    distance, anonymizer.identity.MEASURED_THRESHOLDS) and the smallest face it links. Unused without a key."""

    encoder: Component = Component(name="mobilefacenet")
    threshold: float | None = Field(None, gt=0)
    min_face_px: int = Field(32, ge=1)


class Anonymization(_Strict):
    operator: Component
    region: Region = Region()
    linking: Linking = Linking()


class Recognizer(Component):
    # Its own decision distance: recognizers' distances are not comparable (`anonymizer eval calibrate`).
    same_person_distance: float = Field(gt=0)


class Measurement(_Strict):
    encoder: Component = Component(name="dlib_resnet")
    # An independent second recognizer (another network and training set): the gate's re-identification
    # check must hold for it too, at its own calibrated distance; null: the first recognizer only.
    second_encoder: Recognizer | None = None
    min_reid_face_px: int = Field(32, ge=1)
    covered_fraction: float = Field(0.5, gt=0, le=1)
    change_tolerance: int = Field(16, ge=0, le=255)
    mask_margin_px: int = Field(8, ge=0)
    # The landmark detector that re-finds each face before and after (pose kept, still detectable); null: off.
    pose_landmarks: Component | None = None


class Thresholds(_Strict):
    same_person_distance: float = Field(0.6, gt=0)
    max_reid_rate: float = Field(ge=0, le=1)
    max_uncovered_faces: int = Field(ge=0)
    max_outside_changed_fraction: float = Field(ge=0, le=1)
    max_metadata_fields_left: int = Field(ge=0)
    max_failed_fraction: float = Field(ge=0, le=1)
    min_images: int = Field(1, ge=0)
    max_median_pose_error_deg: float | None = Field(None, gt=0)  # null: not gated
    min_redetected_fraction: float | None = Field(None, ge=0, le=1)  # null: not gated


class Output(_Strict):
    jpeg_quality: int = Field(95, ge=1, le=100)
    webp_quality: int = Field(95, ge=1, le=100)
    max_pixels: int = Field(100_000_000, gt=0)
    # Publish every key as HMAC-SHA256(secret, key) (keys can be people's names); the secret comes from
    # $ANONYMIZER_PSEUDONYM_KEY or the file $ANONYMIZER_PSEUDONYM_KEY_FILE names (anonymizer/release/pseudonyms.py).
    pseudonymize_keys: bool = False


class Execution(_Strict):
    shard_size: int = Field(8, ge=1)
    workers: int | None = Field(None, ge=1)
    cpus_per_worker: float = Field(0.8, gt=0)
    # Ray actors that share one GPU, each in a process of its own (anonymizer.pipeline.executors.actor_shape).
    actors_per_gpu: int = Field(4, ge=1)
    # A shard's images detected together (anonymizer.pipeline.shard, Ensemble.detect_batch): auto, where the
    # networks run on a CUDA GPU, for a few large calls instead of many small ones.
    batch_detection: Literal["auto", "always", "never"] = "auto"
    # At the end of a run, other runs' staging and quarantine folders untouched this long are removed
    # (anonymizer/release/retention.py); null: kept until `anonymizer staging clean`.
    staging_retention_days: float | None = Field(None, gt=0)


class PolicySource(_Strict):
    """One file of a policy as written: `source` names it (a path or a profile name)."""

    source: str
    text: str


class Policy(_Strict):
    name: str
    seed: int = 0
    model_dir: str | None = None
    # Model licence classes (anonymizer.models licence_class) this policy accepts beyond "permissive"; a run
    # refuses any other (anonymizer.components.check_licences). "unknown": a file whose licence class is not recorded.
    accept_licences: list[Literal["non-commercial", "research", "unknown"]] = Field(default_factory=list)
    detection: Detection
    anonymization: Anonymization
    measurement: Measurement = Measurement()
    thresholds: Thresholds
    output: Output = Output()
    execution: Execution = Execution()
    _sources: tuple[PolicySource, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _pose_gates_are_measured(self) -> "Policy":
        """A pose gate without the measurement it reads would fail every run, for a reason no run can fix."""
        gates = [k for k in ("max_median_pose_error_deg", "min_redetected_fraction")
                 if getattr(self.thresholds, k) is not None]
        if gates and self.measurement.pose_landmarks is None:
            raise ValueError(f"thresholds.{gates[0]} gates what measurement.pose_landmarks measures, and that is "
                             "null: set it (e.g. {name: yunet, params: {scales: [1.0], score_threshold: 0.5}})")
        return self

    def __eq__(self, other: object) -> bool:  # the settings decide; which files said them does not
        return isinstance(other, Policy) and self.__dict__ == other.__dict__

    @property
    def text(self) -> str:
        """The policy as it runs, as canonical YAML: every setting (defaults and inherited ones included),
        in the schema's order, component params sorted. parse_policy(text) gives this policy back."""
        return yaml.safe_dump(_sort_params(self.model_dump(mode="json")), sort_keys=False, allow_unicode=True,
                              default_flow_style=False, width=120)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def sources(self) -> tuple[PolicySource, ...]:
        """The files as written, this policy's own first, then each one it extends (empty if built in code)."""
        return self._sources

    @property
    def source_text(self) -> str:
        """This policy's own file as written, comments included (the merged policy if there is none)."""
        return self._sources[0].text if self._sources else self.text


def _sort_params(data: Any, key: str | None = None) -> Any:
    """Component params (free-form mappings) with their keys sorted, so the text does not depend on the order
    a file listed them in; the schema's own keys keep the schema's order."""
    if isinstance(data, dict):
        items = sorted(data.items(), key=lambda kv: str(kv[0])) if key == "params" else data.items()
        return {k: _sort_params(v, "params" if key == "params" else k) for k, v in items}
    if isinstance(data, list):
        return [_sort_params(v, key) for v in data]
    return data


# --- reading YAML -----------------------------------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """YAML that parses but that a policy refuses (duplicate or non-string key, alias, merge key, nesting)."""


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, aliases, merge keys, deep nesting and keys that are not strings.

    Duplicate keys: PyYAML keeps the last silently, so `max_reid_rate: 0.09` then `max_reid_rate: 1.0` would
    quietly loosen a threshold. Aliases: PyYAML shares aliased nodes, so a billion-laughs file loads small
    but explodes when merged, validated or dumped; a policy has no use for them. Nesting: the composer
    recurses once per level."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(f"line {mark.line + 1}: YAML aliases (*{self.peek_event().anchor}) are not allowed "
                           "in a policy: state the value again")
        self._depth += 1
        if self._depth > MAX_NESTING:
            mark = self.peek_event().start_mark
            raise _Refused(f"line {mark.line + 1}: nested deeper than {MAX_NESTING} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":  # its keys would bypass these checks
                    raise _Refused(f"line {line}: YAML merge keys (<<) are not allowed in a policy: use extends")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Refused(f"line {line}: a {key_node.id} as a key")
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str):  # `1:`, `on:` (a YAML 1.1 boolean)
                    raise _Refused(f"line {line}: key {key_node.value!r} reads as {type(key).__name__}, not a name "
                                   "(quote it)")
                if key in first:
                    raise _Refused(f"line {line}: duplicate key {key!r} (first on line {first[key]}); "
                                   "YAML would silently keep only the last")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_mapping(text: str, source: str) -> dict:
    size = len(text.encode())
    if size > MAX_POLICY_BYTES:
        raise PolicyError(f"policy {source}: {size} bytes, over the {MAX_POLICY_BYTES} byte limit for a policy")
    try:
        data = yaml.load(text, Loader=_PolicyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Refused as exc:
        raise PolicyError(f"policy {source}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy {source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"policy {source}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# --- extends ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    source: str  # as messages name it
    identity: str  # what a cycle is detected by: "profile:<name>", or the resolved path
    base_dir: Path | None  # where a relative `extends` path resolves; None: profile names only


def profiles() -> list[str]:
    """The embedded profiles' names (policies/<name>.yaml)."""
    root = resources.files("anonymizer.policies")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def default_policy_text(profile: str = "default") -> str:
    """An embedded profile's file as written."""
    if profile not in profiles():
        raise PolicyError(f"unknown profile {profile!r}; known: {', '.join(profiles())}")
    return resources.files("anonymizer.policies").joinpath(f"{profile}.yaml").read_text(encoding="utf-8")


def _read(path: Path, source: str) -> str:
    """A policy file's text, reading no more than the size cap allows."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"policy {source}: cannot read: {exc.strerror}") from exc
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy {source}: over the {MAX_POLICY_BYTES} byte limit for a policy")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy {source}: not UTF-8 text: {exc}") from None


def _is_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml"))


def _parent(ref: Any, child: _Origin) -> tuple[str, _Origin]:
    """The text and origin of the policy `child` extends."""
    where = f"policy {child.source}: key 'extends'"
    if not isinstance(ref, str) or not ref.strip():
        raise PolicyError(f"{where}: expected a profile name ({', '.join(profiles())}) or a path to a policy file, "
                          f"got {ref!r}")
    if _is_path(ref):
        if child.base_dir is None:
            raise PolicyError(f"{where}: an embedded profile can extend only another profile, not {ref!r}")
        path = child.base_dir / ref
        origin = _Origin(str(path), str(path.resolve()), path.parent)
        if not path.is_file():
            raise PolicyError(f"{where}: no policy file {str(path)!r}")
        return _read(path, origin.source), origin
    if ref not in profiles():
        raise PolicyError(f"{where}: unknown profile {ref!r}; known: {', '.join(profiles())} "
                          "(a file is named by a path ending in .yaml)")
    return default_policy_text(ref), _Origin(ref, f"profile:{ref}", None)


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge, anything else replaces; a component (a mapping with a `name`)
    of another name replaces the parent's whole."""
    out = dict(base)
    for key, value in over.items():
        parent = out.get(key)
        if (isinstance(parent, dict) and isinstance(value, dict)
                and not ("name" in value and value.get("name") != parent.get("name"))):
            value = _merge(parent, value)
        out[key] = value
    return out


def _resolve(text: str, origin: _Origin, chain: tuple[_Origin, ...] = ()) -> tuple[dict, list[PolicySource]]:
    """The merged mapping of the policy at `origin` and every file it extends, with those files as written."""
    data = _load_mapping(text, origin.source)
    layers = [PolicySource(source=origin.source, text=text)]
    if "extends" not in data:
        return data, layers
    ref = data.pop("extends")
    if "name" not in data:
        raise PolicyError(f"policy {origin.source}: key 'name': required: a policy that extends another names "
                          "itself (names are not inherited)")
    parent_text, parent = _parent(ref, origin)
    lineage = (*chain, origin)
    if parent.identity in {o.identity for o in lineage}:
        names = " -> ".join(o.source for o in (*lineage, parent))
        raise PolicyError(f"policy {lineage[0].source}: 'extends' forms a cycle: {names}")
    if len(lineage) >= MAX_EXTENDS:
        raise PolicyError(f"policy {lineage[0].source}: 'extends' chain longer than {MAX_EXTENDS} files")
    base, parent_layers = _resolve(parent_text, parent, lineage)
    merged = _merge({k: v for k, v in base.items() if k != "name"}, data)
    return merged, layers + parent_layers


def _policy(text: str, origin: _Origin) -> Policy:
    data, layers = _resolve(text, origin)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"key '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" if e["loc"] else e["msg"]
                             for e in exc.errors())
        merged = f" (merged with {', '.join(s.source for s in layers[1:])})" if len(layers) > 1 else ""
        raise PolicyError(f"policy {origin.source}{merged}: {problems}") from None
    policy._sources = tuple(layers)
    return policy


def parse_policy(text: str, source: str = "<policy>", base_dir: str | Path | None = None) -> Policy:
    """The policy in `text`; a relative `extends` path resolves against `base_dir` (default: the current
    directory)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _policy(text, _Origin(source, f"text:{source}", base))


def load_policy(path: str | Path | None = None, profile: str = "default") -> Policy:
    """The policy file at `path`, else the embedded profile (policies/<profile>.yaml)."""
    if path is None:
        return _policy(default_policy_text(profile), _Origin(profile, f"profile:{profile}", None))
    path = Path(path)
    return _policy(_read(path, str(path)), _Origin(str(path), str(path.resolve()), path.parent))
