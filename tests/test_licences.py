"""The licence gate: every model file a policy loads carries its licence and licence class; a run refuses a
non-commercial or research one (exit 2, naming the model and its licence) unless the policy accepts that
class; the audit report lists every model's licence at the top."""

from __future__ import annotations

import shutil

import pytest

from anonymizer import exit_codes, models
from anonymizer import report as reporting
from anonymizer.components import check_licences, model_inventory
from anonymizer.policy import PolicyError, load_policy, parse_policy
from conftest import PHOTOS

SCRFD_AUDITOR = "detection:\n  auditor: {name: scrfd, params: {score_threshold: 0.5}}\n"


def _policy_file(tmp_path, body: str, name: str = "p") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"extends: default\nname: {name}\n{body}")
    return str(path)


def test_every_model_has_a_licence_class():
    assert all(s.licence_class in models.LICENCE_CLASSES for s in models.MODELS.values())
    assert models.MODELS["scrfd"].licence_class == "non-commercial"
    assert models.MODELS["scrfd"].licence == "non-commercial research only (InsightFace)"
    assert models.MODELS["mobilefacenet"].licence_class == "non-commercial"
    assert models.MODELS["dlib_shape68"].licence_class == "research"
    assert models.MODELS["centerface"].licence_class == "permissive"


def test_inventory_rows_carry_the_class_and_the_default_policy_passes(shared):
    rows = model_inventory(load_policy())
    assert rows and all(r["licence_class"] == "permissive" and r["licence"] for r in rows)
    check_licences(load_policy(), rows)  # the default profile needs no licence beyond permissive


def test_non_commercial_model_refused_with_its_name_and_licence(shared, tmp_path, capsys):
    """Through the command line: exit 2 before any work, the message names the model and its licence."""
    from anonymizer.cli import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PHOTOS / "multiface.jpg", src / "a.jpg")
    code = main(["run", str(src), str(tmp_path / "rel"), "--policy", _policy_file(tmp_path, SCRFD_AUDITOR),
                 "--engine", "local"])
    err = capsys.readouterr().err
    assert code == exit_codes.USAGE == 2, err
    assert "licence gate" in err and "'scrfd'" in err and "non-commercial research only (InsightFace)" in err
    assert "accept_licences: [non-commercial]" in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and tmp_path / "src" not in p.parents]
    assert [p.name for p in written] == ["p.yaml"]  # refused before any work: nothing staged or released


def test_accepting_the_class_passes_the_gate(shared, tmp_path):
    """The same policy with `accept_licences: [non-commercial]` plans its run."""
    from anonymizer.pipeline.run import RunContext, plan

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PHOTOS / "multiface.jpg", src / "a.jpg")
    path = _policy_file(tmp_path, "accept_licences: [non-commercial]\n" + SCRFD_AUDITOR)
    ctx = RunContext.create(str(src), str(tmp_path / "rel"), path, engine="local")
    assert plan(ctx).candidates == 1
    assert any(r["name"] == "scrfd" and r["licence_class"] == "non-commercial" for r in model_inventory(ctx.policy))


def test_research_class_is_its_own_acceptance(shared):
    """dlib's 68-point predictor (iBUG 300-W: research use) needs `research`; accepting non-commercial is not enough."""
    body = "measurement:\n  encoder: {name: dlib_resnet, params: {landmarks: 68}}\n"
    for accepted in ("", "accept_licences: [non-commercial]\n"):
        p = parse_policy(f"extends: default\nname: r68\n{accepted}{body}")
        with pytest.raises(PolicyError, match=r"'dlib_shape68'.*is research: licence 'iBUG 300-W: research use"):
            check_licences(p, model_inventory(p))
    p = parse_policy(f"extends: default\nname: r68\naccept_licences: [research]\n{body}")
    check_licences(p, model_inventory(p))


def test_unknown_licence_class_is_refused():
    p = parse_policy("extends: default\nname: u\n")
    row = {"component": "x", "name": "mystery", "file": "m.onnx", "licence": "?", "licence_class": "unknown"}
    with pytest.raises(PolicyError, match="'mystery'.*unknown"):
        check_licences(p, [row])
    check_licences(parse_policy("extends: default\nname: u\naccept_licences: [unknown]\n"), [row])
    with pytest.raises(PolicyError, match="accept_licences"):
        parse_policy("extends: default\nname: u\naccept_licences: [anything]\n")


def test_report_lists_every_licence_at_the_top(shared):
    p = parse_policy("extends: default\nname: nc\naccept_licences: [non-commercial]\n" + SCRFD_AUDITOR)
    check = {"name": "uncovered_faces", "success": True, "threshold": "<= 0", "observed": 0, "evidence": {},
             "protects": "faces the auditor finds are anonymized", "expectation": "x"}
    report = {"run_id": "r", "released": True, "verdict": {"reason": "all checks passed", "checks": [check]},
              "models": model_inventory(p), "policy": {"name": p.name, "sha256": p.sha256, "text": p.text}}
    page = reporting.render_html(report, {})
    top = page[page.index('id="licences"'):page.index('id="checks"')]
    assert page.index('id="licences"') < page.index('id="checks"')
    assert "non-commercial research only (InsightFace)" in top and "scrfd" in top
    assert "accepts: permissive, non-commercial" in top
    for r in report["models"]:
        assert r["name"] in top and r["licence_class"] in top
