"""prefect.yaml describes a deployment that Prefect can load: real entrypoint, valid cron, known parameters."""

import inspect

import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from conftest import REPO


def test_deployments_point_at_the_flow_with_valid_schedules(monkeypatch):
    monkeypatch.chdir(REPO)
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["deployments"]
    for d in config["deployments"]:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert flow.name == "anonymize-dataset"
        assert set(d["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        for s in d["schedules"]:
            CronSchedule(cron=s["cron"], timezone=s.get("timezone"))
        assert d["work_pool"]["name"]
