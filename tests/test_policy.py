import re
import time

import pytest

from anonymizer.policy import MAX_POLICY_BYTES, PolicyError, default_policy_text, load_policy, parse_policy
from conftest import REPO


def test_default_policy_loads_and_every_threshold_says_what_it_protects():
    p = load_policy()
    assert p.name == "default" and p.thresholds.max_uncovered_faces == 0
    assert p.source_text == (REPO / "policies" / "default.yaml").read_text()
    assert [s.source for s in p.sources] == ["default"]
    block = default_policy_text().split("\nthresholds:\n")[1].split("\n\n")[0].splitlines()
    commented = False
    for line in block:  # each threshold has a comment on its line, or comment lines since the last key
        if line.strip().startswith("#"):
            commented = True
        elif re.match(r"\s+\w+:", line):
            assert commented or "#" in line, f"threshold without a rationale: {line.strip()}"
            commented = False


def test_text_is_the_policy_that_runs_as_canonical_yaml():
    p = load_policy()
    again = parse_policy(p.text, "run policy")  # what a worker is sent
    assert again == p and again.text == p.text and again.sha256 == p.sha256
    assert "#" not in p.text and "max_median_pose_error_deg: null" in p.text  # every setting, no comments
    # Comments and the order params are listed in do not change what runs, so not the hash either.
    reworded = default_policy_text().replace("# run seed", "# the seed").replace(
        "params: {upsample: 1, min_score: 0.2}", "params: {min_score: 0.2, upsample: 1}")
    assert reworded != default_policy_text() and parse_policy(reworded).sha256 == p.sha256
    changed = parse_policy(default_policy_text().replace("min_score: 0.11", "min_score: 0.12"))
    assert changed.sha256 != p.sha256
    assert p.model_copy(update={"seed": 1}).sha256 != p.sha256  # a modified policy hashes what it now is


def test_unknown_key_is_named():
    text = default_policy_text().replace("max_reid_rate:", "max_reid_ratio:")
    with pytest.raises(PolicyError, match=r"thresholds\.max_reid_ratio'.*Extra inputs"):
        parse_policy(text, "p.yaml")


def test_bad_value_names_key_and_problem():
    text = default_policy_text().replace("max_reid_rate: 0.09", "max_reid_rate: lots")
    with pytest.raises(PolicyError, match=r"p.yaml: key 'thresholds.max_reid_rate': Input should be a valid number"):
        parse_policy(text, "p.yaml")


def test_unreadable_and_malformed_policies(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(PolicyError, match="expected a mapping"):
        load_policy(tmp_path / "list.yaml")
    with pytest.raises(PolicyError, match="unknown profile 'lax'; known: default, generated, realistic"):
        load_policy(profile="lax")


def test_unknown_component_name_lists_known(policy):
    from anonymizer.detect import build_detector

    with pytest.raises(KeyError, match="unknown detector 'yolo'.*yunet"):
        build_detector("yolo", {})


# --- extends ------------------------------------------------------------------------------------------


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_merges_mappings_and_replaces_lists_and_other_components(tmp_path):
    base = load_policy()
    p = load_policy(_write(tmp_path / "mine.yaml", """
extends: default
name: mine
detection:
  min_score: 0.2                  # one key of a mapping: the rest of detection is the default's
  auditor: {params: {min_face_size: 40}}   # same component: its params merge
anonymization:
  operator: {name: pixelate, params: {strength: 0.2}}   # another component: the blur's params do not leak
measurement:
  pose_landmarks: {name: yunet, params: {scales: [1.0]}}   # a component where the default has null
thresholds:
  max_reid_rate: 0.05
"""))
    assert p.name == "mine" and p.detection.min_score == 0.2
    assert p.detection.detectors == base.detection.detectors and p.detection.merge == base.detection.merge
    assert p.detection.auditor.params == {"min_face_size": 40, "thresholds": [0.6, 0.7, 0.8]}
    assert p.anonymization.operator.model_dump() == {"name": "pixelate", "params": {"strength": 0.2}}
    assert p.anonymization.region == base.anonymization.region and base.measurement.pose_landmarks is None
    assert p.measurement.pose_landmarks.model_dump() == {"name": "yunet", "params": {"scales": [1.0]}}
    assert p.thresholds.max_reid_rate == 0.05
    assert p.thresholds.same_person_distance == base.thresholds.same_person_distance
    assert [s.source for s in p.sources] == [str(tmp_path / "mine.yaml"), "default"]
    assert "extends" not in p.text and "name: mine" in p.text and "min_score: 0.2" in p.text

    one = load_policy(_write(tmp_path / "one.yaml", "extends: default\nname: one\ndetection:\n"
                                                    "  detectors: [{name: yunet, params: {scales: [1.0]}}]\n"))
    assert [(d.name, d.params) for d in one.detection.detectors] == [("yunet", {"scales": [1.0]})]  # lists replace

    _write(tmp_path / "nameless.yaml", "extends: default\nseed: 3\n")
    with pytest.raises(PolicyError, match=r"nameless.yaml: key 'name': required.*not inherited"):
        load_policy(tmp_path / "nameless.yaml")
    _write(tmp_path / "bad.yaml", "extends: default\nname: bad\nthresholds: {max_reid_rate: 2}\n")
    with pytest.raises(PolicyError, match=r"bad.yaml \(merged with default\): key 'thresholds.max_reid_rate'"):
        load_policy(tmp_path / "bad.yaml")


def test_extends_chain_of_files_and_profiles(tmp_path):
    _write(tmp_path / "shared" / "team.yaml", "extends: realistic\nname: team\nseed: 7\n"
                                              "thresholds: {max_reid_rate: 0.05}\n")
    p = load_policy(_write(tmp_path / "runs" / "mine.yaml", "extends: ../shared/team.yaml\nname: mine\n"
                                                             "output: {jpeg_quality: 90}\n"))
    assert (p.name, p.seed, p.output.jpeg_quality, p.thresholds.max_reid_rate) == ("mine", 7, 90, 0.05)
    assert p.anonymization.operator.name == "bank"  # from realistic
    assert p.thresholds.max_median_pose_error_deg == 12  # from realistic
    assert p.detection.detectors == load_policy().detection.detectors  # from default, through realistic
    assert [s.source for s in p.sources][2:] == ["realistic", "default"]
    assert p.sources[1].text == (tmp_path / "shared" / "team.yaml").read_text()
    # parse_policy resolves a relative path against base_dir
    q = parse_policy("extends: shared/team.yaml\nname: q\n", "q", base_dir=tmp_path)
    assert q.seed == 7


def test_a_pose_gate_without_its_measurement_is_refused_at_load(tmp_path):
    mine = _write(tmp_path / "mine.yaml", "extends: realistic\nname: mine\nmeasurement:\n  pose_landmarks: null\n")
    with pytest.raises(PolicyError, match=r"mine.yaml .*thresholds.max_median_pose_error_deg gates what "
                                          r"measurement.pose_landmarks measures, and that is null"):
        load_policy(mine)


def test_extends_cycles_and_unknown_parents_are_refused(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    _write(tmp_path / "b.yaml", "extends: ./a.yaml\nname: b\n")
    with pytest.raises(PolicyError, match=r"a.yaml: 'extends' forms a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_policy(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "extends: self.yaml\nname: self\n")
    with pytest.raises(PolicyError, match="cycle"):
        load_policy(tmp_path / "self.yaml")
    _write(tmp_path / "c.yaml", "extends: lenient\nname: c\n")
    with pytest.raises(PolicyError, match=r"c.yaml: key 'extends': unknown profile 'lenient'; known: default, "
                                          r"generated, realistic, realistic_permissive, research, standard, strict"):
        load_policy(tmp_path / "c.yaml")
    _write(tmp_path / "d.yaml", "extends: nowhere/base.yaml\nname: d\n")
    with pytest.raises(PolicyError, match=r"d.yaml: key 'extends': no policy file .*nowhere/base.yaml"):
        load_policy(tmp_path / "d.yaml")
    _write(tmp_path / "e.yaml", "extends: [default]\nname: e\n")
    with pytest.raises(PolicyError, match=r"e.yaml: key 'extends': expected a profile name"):
        load_policy(tmp_path / "e.yaml")


# --- hostile files ------------------------------------------------------------------------------------


def test_duplicate_key_is_refused_with_its_lines():
    text = default_policy_text().replace("  max_reid_rate: 0.09", "  max_reid_rate: 0.09\n  max_reid_rate: 1.0")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("  max_reid_rate: 1.0"))
    with pytest.raises(PolicyError, match=rf"p.yaml: refused: line {line}: duplicate key 'max_reid_rate' "
                                          rf"\(first on line {line - 1}\)"):
        parse_policy(text, "p.yaml")
    with pytest.raises(PolicyError, match="duplicate key 'name'"):
        parse_policy("name: a\nname: b\n")
    with pytest.raises(PolicyError, match=r"line 2: key 'on' reads as bool, not a name \(quote it\)"):
        parse_policy("name: a\non: 1\n")  # YAML 1.1 reads on/off/yes/no as booleans
    with pytest.raises(PolicyError, match=r"line 2: YAML merge keys \(<<\) are not allowed in a policy: use extends"):
        parse_policy("name: a\nthresholds: {<<: {max_reid_rate: 1.0}, max_reid_rate: 0.09}\n")


def test_billion_laughs_is_refused_fast():
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    text = default_policy_text() + "\nbomb:\n" + "\n".join("  " + x for x in levels) + "\n"  # 9^9 strings if walked
    start = time.perf_counter()
    with pytest.raises(PolicyError, match=r"refused: line \d+: YAML aliases \(\*a\) are not allowed"):
        parse_policy(text, "bomb.yaml")
    assert time.perf_counter() - start < 1.0


def test_oversize_and_deeply_nested_policies_are_refused(tmp_path):
    big = default_policy_text() + "#" * MAX_POLICY_BYTES
    with pytest.raises(PolicyError, match=r"big.yaml: \d+ bytes, over the 262144 byte limit"):
        parse_policy(big, "big.yaml")
    _write(tmp_path / "big.yaml", big)
    with pytest.raises(PolicyError, match="big.yaml: over the 262144 byte limit"):
        load_policy(tmp_path / "big.yaml")
    deep = default_policy_text() + "deep: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(PolicyError, match=r"refused: line \d+: nested deeper than"):
        parse_policy(deep, "deep.yaml")


# --- components checked against the registries --------------------------------------------------------


def test_unknown_component_and_misspelt_param_are_refused_at_load_with_the_key():
    from anonymizer.policy_check import check_components

    text = default_policy_text()
    text = text.replace("- name: retinaface", "- name: retinafaces", 1)
    text = text.replace("scales: [1.0, 2.0]", "scale: [1.0, 2.0]", 1)  # YuNet's, the first detector
    text = text.replace("params: {strength: 0.35}", "params: {strenght: 0.35}")
    policy = parse_policy(text, "typo.yaml")  # valid as a policy: the schema does not know components
    with pytest.raises(PolicyError) as err:
        check_components(policy, "typo.yaml")
    msg = str(err.value)
    assert msg.startswith("policy typo.yaml: ")
    assert ("key 'detection.detectors[0].params.scale': unknown parameter for detector 'yunet'; known: "
            "backend, device, max_side, nms_threshold") in msg and "model_dir" not in msg.split("yunet'; known:")[1].split(";")[0]
    assert "key 'detection.detectors[1].name': unknown detector 'retinafaces'; known: centerface" in msg
    assert "key 'anonymization.operator.params.strenght': unknown parameter for anonymizer 'blur'" in msg
    assert "anonymization.operator.params.strength':" not in msg  # one problem per key: the misspelling


def test_params_the_pipeline_passes_are_neither_required_nor_settable():
    from anonymizer.policy_check import check_components

    for profile in ("default", "realistic"):  # model_dir and the region are passed by the pipeline: not flagged
        check_components(load_policy(profile=profile))
    region = default_policy_text().replace("params: {strength: 0.35}", "params: {strength: 0.35, feather: 0.3}")
    with pytest.raises(PolicyError, match=r"key 'anonymization.operator.params.feather': the pipeline passes"):
        check_components(parse_policy(region, "r.yaml"), "r.yaml")
    missing = default_policy_text().replace("params: {strength: 0.35}", "params: {}")
    with pytest.raises(PolicyError, match=r"key 'anonymization.operator.params.strength': anonymizer 'blur' "
                                          r"needs parameter 'strength'"):
        check_components(parse_policy(missing, "m.yaml"), "m.yaml")
    guard = default_policy_text("generated").replace("truncation: 1.0", "truncaton: 1.0")
    with pytest.raises(PolicyError, match=r"'anonymization.operator.params.truncaton': unknown parameter for "
                                          r"anonymizer 'generated'"):
        check_components(parse_policy(guard, "g.yaml"), "g.yaml")


def test_registry_check_reads_the_factory_signature_without_building():
    from anonymizer.registry import ComponentError, Registry

    built = []
    reg = Registry("widget")

    @reg.register("plain")
    def plain(size: int, model_dir: str | None = None, colour: str = "red"):
        built.append("plain")

    @reg.register("open")
    def open_ended(size: int = 1, **extra):
        built.append("open")

    reg.check("plain", {"size": 2, "colour": "blue"}, injected=("model_dir",))
    reg.check("open", {"anything": 1, "at_all": 2})  # **kwargs: any name
    with pytest.raises(ComponentError, match=r"unknown parameter for widget 'plain'; known: colour, size$") as e:
        reg.check("plain", {"size": 2, "color": "blue"}, injected=("model_dir",))
    assert e.value.param == "color"
    with pytest.raises(ComponentError, match="widget 'plain' needs parameter 'size'"):
        reg.check("plain", {})
    with pytest.raises(ComponentError, match="passes this to widget 'plain' itself"):
        reg.check("plain", {"size": 1, "model_dir": "/x"}, injected=("model_dir",))
    with pytest.raises(ComponentError, match="unknown widget 'plian'; known: open, plain") as e:
        reg.check("plian", {})
    assert e.value.param is None and built == []  # nothing was built
