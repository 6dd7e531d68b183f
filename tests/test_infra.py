"""The deployment files say what the README says: a GPU worker group, least-privilege storage access."""

import json

import yaml

from conftest import REPO


def test_raycluster_has_a_gpu_worker_group():
    cluster = yaml.safe_load((REPO / "infra" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "ANONYMIZER_MODEL_DIR", "value": "/models"} in container["env"]


def test_iam_policy_is_least_privilege():
    policy = json.loads((REPO / "infra" / "iam-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions <= {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                       "s3:ListMultipartUploadParts"}
    assert all("*" not in a for a in actions) and all(s["Effect"] == "Allow" for s in policy["Statement"])
    source = next(s for s in policy["Statement"] if s["Sid"] == "ReadSourceOnly")
    assert source["Action"] == "s3:GetObject"  # the source is never written
    writes = next(s for s in policy["Statement"] if "s3:PutObject" in s["Action"])
    assert not any("SOURCE_BUCKET" in r for r in writes["Resource"])
