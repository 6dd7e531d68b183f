"""Shared fixtures: the ../shared data, a real local Ray, a real (temporary) Prefect server."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

# Quieten libraries that phone home, before they are imported.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# S3 tests talk to moto on 127.0.0.1 only: dummy credentials, and never ask an EC2 metadata service.
for _k, _v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(_k, _v)
# Ray's dashboard probes cloud metadata addresses unless this file exists.
_bootstrap = Path.home() / "ray_bootstrap_config.yaml"
if not _bootstrap.exists():
    _bootstrap.write_text("{}\n")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIZER_SHARED", REPO.parent / "shared")).resolve()
os.environ.setdefault("ANONYMIZER_MODEL_DIR", str(SHARED / "models"))
PHOTOS = SHARED / "data" / "photos"
LFW = SHARED / "data" / "lfw" / "images"


def lfw_images(n: int) -> list[Path]:
    """n single-face LFW images of n different people, in a fixed order."""
    people = sorted(p for p in LFW.iterdir() if p.is_dir())[:: max(1, 4000 // n)][:n]
    return [sorted(p.glob("*.jpg"))[0] for p in people]


@pytest.fixture(scope="session")
def shared() -> Path:
    if not PHOTOS.is_dir():
        pytest.fail(f"test data not found at {SHARED} (set ANONYMIZER_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def policy():
    from anonymizer.policy import load_policy

    return load_policy()


@pytest.fixture(scope="session")
def components(policy):
    from anonymizer.components import Components

    return Components.from_policy(policy)


@pytest.fixture(scope="session")
def stylegan_bank(shared, tmp_path_factory) -> Path:
    """A face bank of four StyleGAN people, built once by the CLI (the realistic and keyed-run tests)."""
    pytest.importorskip("openvino", reason="pip install 'anonymizer[stylegan]': MobileStyleGAN cannot run")
    from anonymizer.cli import main

    out = tmp_path_factory.mktemp("bank") / "faces"
    assert main(["bank", "build", "stylegan", "--out", str(out), "--n", "4", "--seed", "2"]) == 0
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@contextlib.contextmanager
def moto_server(*buckets: str, versioned: tuple[str, ...] = ()):
    """moto's S3 (and KMS) server on 127.0.0.1 for the block, AWS_ENDPOINT_URL pointing at it; yields an S3
    client with `buckets` created (`versioned` ones with versioning on)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    try:
        from anonymizer.storage import s3_client

        client = s3_client()
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        for bucket in versioned:
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        yield client
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved
        server.stop()
