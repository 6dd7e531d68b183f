import re

import pytest

from anonymizer.policy import PolicyError, default_policy_text, load_policy, parse_policy
from conftest import REPO


def test_default_policy_loads_and_every_threshold_says_what_it_protects():
    p = load_policy()
    assert p.name == "default" and p.thresholds.max_uncovered_faces == 0
    assert p.text == (REPO / "policies" / "default.yaml").read_text()
    block = default_policy_text().split("\nthresholds:\n")[1].split("\n\n")[0].splitlines()
    commented = False
    for line in block:  # each threshold has a comment on its line, or comment lines since the last key
        if line.strip().startswith("#"):
            commented = True
        elif re.match(r"\s+\w+:", line):
            assert commented or "#" in line, f"threshold without a rationale: {line.strip()}"
            commented = False

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


def test_unknown_component_name_lists_known(policy):
    from anonymizer.detect import build_detector

    with pytest.raises(KeyError, match="unknown detector 'yolo'.*yunet"):
        build_detector("yolo", {})
