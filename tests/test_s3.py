"""S3 through a real HTTP endpoint: moto's server on 127.0.0.1, reached with the same code that talks to AWS."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import PHOTOS, REPO

SMALL, PHOTO_NAMES = 2000, ["group_13.jpg", "group_8.jpg", "multiface.jpg", "group_2.jpg", "group_5.jpg"]


@pytest.fixture(scope="module")
def s3(monkeypatch_module=None):
    from moto.server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    from anonymizer.storage import s3_client

    client = s3_client()
    for bucket in ("src", "rel", "kill"):
        client.create_bucket(Bucket=bucket)
    yield client
    del os.environ["AWS_ENDPOINT_URL"]
    server.stop()


def _small_jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _put_many(client, bucket: str, prefix: str, n: int, photos: list[str]) -> set[str]:
    from concurrent.futures import ThreadPoolExecutor

    keys = {f"small/{i // 500:02d}/img_{i:05d}.jpg": i for i in range(n)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"{prefix}/{kv[0]}", Body=_small_jpeg(kv[1])),
                      keys.items()))
    for name in photos:
        client.put_object(Bucket=bucket, Key=f"{prefix}/photos/{name}", Body=(PHOTOS / name).read_bytes())
    return set(keys) | {f"photos/{n}" for n in photos}


def _policy(tmp_path, **replace) -> str:
    text = (REPO / "policies" / "default.yaml").read_text().replace("shard_size: 4 ", "shard_size: 100 ")
    for a, b in replace.items():
        text = text.replace(a, b)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def _keys(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def first_release(s3, tmp_path_factory, ray_cluster, shared):
    from anonymizer.pipeline import run_pipeline

    keys = _put_many(s3, "src", "data", SMALL, PHOTO_NAMES)
    tmp = tmp_path_factory.mktemp("s3policy")
    outcome = run_pipeline("s3://src/data", "s3://rel/releases", policy=_policy(tmp), workers=2,
                           staging="s3://rel/staging", quarantine="s3://rel/quarantine")
    return outcome, keys, tmp


def test_thousands_of_objects_are_listed_across_pages_and_released(s3, first_release):
    outcome, keys, _ = first_release
    assert outcome.released, outcome.verdict.reason
    assert len(keys) > 2000  # list_objects_v2 pages hold 1000 keys
    prefix = f"releases/{outcome.run_id}/"
    released = _keys(s3, "rel", prefix)
    assert {k[len(prefix) + len("images/"):] for k in released if k.startswith(prefix + "images/")} == keys
    manifest = pq.read_table(io.BytesIO(s3.get_object(Bucket="rel", Key=prefix + "manifest.parquet")["Body"].read()))
    assert sorted(manifest.column("key").to_pylist()) == sorted(keys)
    assert s3.get_object(Bucket="rel", Key="releases/LATEST")["Body"].read().decode() == outcome.run_id
    report = json.loads(s3.get_object(Bucket="rel", Key=prefix + "report.json")["Body"].read())
    assert report["counts"]["released"] == len(keys) and report["metrics"]["faces_anonymized"] > 50


def test_incremental_run_processes_only_new_and_changed_objects(s3, first_release, ray_cluster):
    from anonymizer.pipeline import run_pipeline

    first, keys, tmp = first_release
    for i in range(10):
        s3.put_object(Bucket="src", Key=f"data/new/extra_{i}.jpg", Body=_small_jpeg(10_000 + i))
    changed = ["small/00/img_00003.jpg", "small/01/img_00600.jpg"]
    for k in changed:
        s3.put_object(Bucket="src", Key=f"data/{k}", Body=_small_jpeg(20_000 + len(k)))
    s3.delete_object(Bucket="src", Key="data/small/02/img_01000.jpg")
    before = s3.get_object(Bucket="rel", Key=f"releases/{first.run_id}/manifest.parquet")["Body"].read()

    second = run_pipeline("s3://src/data", "s3://rel/releases", policy=_policy(tmp), workers=2,
                          staging="s3://rel/staging", quarantine="s3://rel/quarantine")
    assert second.released, second.verdict.reason
    prefix = f"releases/{second.run_id}/"
    manifest = pq.read_table(io.BytesIO(s3.get_object(Bucket="rel", Key=prefix + "manifest.parquet")["Body"].read()))
    rows = manifest.to_pylist()
    processed = {r["key"] for r in rows if r["origin"] == "processed"}
    assert processed == {f"new/extra_{i}.jpg" for i in range(10)} | set(changed)
    assert {r["run_id"] for r in rows if r["origin"] == "carried"} == {first.run_id}
    assert len(rows) == len(keys) + 10 - 1 and "small/02/img_01000.jpg" not in {r["key"] for r in rows}
    meta = {k.decode(): v.decode() for k, v in manifest.schema.metadata.items()}
    assert meta["previous_release"] == first.run_id
    assert json.loads(meta["deleted_keys"]) == ["small/02/img_01000.jpg"]
    assert len(meta["report_sha256"]) == 64 and "yunet" in meta["models"]
    assert len([k for k in _keys(s3, "rel", prefix + "images/")]) == len(rows)  # carried outputs copied in
    # the earlier release is never rewritten; LATEST moves on
    assert s3.get_object(Bucket="rel", Key=f"releases/{first.run_id}/manifest.parquet")["Body"].read() == before
    assert s3.get_object(Bucket="rel", Key="releases/LATEST")["Body"].read().decode() == second.run_id


def test_malicious_keys_never_escape_and_are_reported(s3, tmp_path, ray_cluster, shared):
    from anonymizer.pipeline import run_pipeline
    from anonymizer.storage import Location, UnsafeKeyError

    good = (PHOTOS / "multiface.jpg").read_bytes()
    s3.put_object(Bucket="src", Key="evil/ok.jpg", Body=good)
    bad = ["evil/a/../../b.jpg", "evil//lead.jpg", "evil/x/./y.jpg", "evil/bell\x07.jpg", "evil/cafe\u0301.jpg"]
    for key in bad:
        s3.put_object(Bucket="src", Key=key, Body=good)
    outcome = run_pipeline("s3://src/evil", str(tmp_path / "rel"), policy=_policy(tmp_path), workers=1)
    assert outcome.released, outcome.verdict.reason
    objects = {o["key"]: o for o in outcome.report["objects"]}
    assert objects["ok.jpg"]["status"] == "released"
    unsafe = [o for o in objects.values() if o["status"] == "skipped"]
    assert len(unsafe) == len(bad) and all("unsafe key" in o["reason"] for o in unsafe)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(str(p).startswith(str(tmp_path)) for p in files)
    assert not any(p.name in ("b.jpg", "lead.jpg", "y.jpg") for p in files)
    with pytest.raises(UnsafeKeyError):
        Location.parse(str(tmp_path / "rel")).write_bytes("../escaped.jpg", b"x")
    assert not (tmp_path / "escaped.jpg").exists()


def test_failed_validation_puts_nothing_under_the_release_prefix(s3, tmp_path, ray_cluster, shared):
    from anonymizer.pipeline import run_pipeline

    for name in PHOTO_NAMES[:2]:
        s3.put_object(Bucket="src", Key=f"strict/{name}", Body=(PHOTOS / name).read_bytes())
    policy = _policy(tmp_path, **{"same_person_distance: 0.527": "same_person_distance: 9.0",
                                  "max_reid_rate: 0.09": "max_reid_rate: 0.0"})
    outcome = run_pipeline("s3://src/strict", "s3://rel/failing", policy=policy, workers=1,
                           staging="s3://rel/failing-staging", quarantine="s3://rel/failing-quarantine")
    assert not outcome.released
    assert _keys(s3, "rel", "failing/") == []
    quarantined = _keys(s3, "rel", f"failing-quarantine/{outcome.run_id}/")
    assert any(k.endswith("validation.json") for k in quarantined)
    assert sum("/outputs/" in k for k in quarantined) == 2


def test_killed_run_resumes_and_releases_each_object_exactly_once(s3, tmp_path, shared):
    for i in range(40):
        s3.put_object(Bucket="kill", Key=f"src/small/img_{i:03d}.jpg", Body=_small_jpeg(30_000 + i))
    for name in PHOTO_NAMES:
        s3.put_object(Bucket="kill", Key=f"src/photos/{name}", Body=(PHOTOS / name).read_bytes())
    policy = _policy(tmp_path, **{"shard_size: 100 ": "shard_size: 3 "})
    cmd = [sys.executable, "-m", "anonymizer.cli", "run", "s3://kill/src", "s3://kill/rel", "--run-id", "nightly-1",
           "--policy", policy, "--workers", "1", "--engine", "ray"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(k.endswith("_SUCCESS") and "/shards/" in k
                                              for k in _keys(s3, "kill", "rel.staging/nightly-1/shards/")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray and its workers, mid-run
    proc.wait()
    done_before = sum(k.endswith("_SUCCESS") for k in _keys(s3, "kill", "rel.staging/nightly-1/shards/"))
    assert 1 <= done_before < 15 and _keys(s3, "kill", "rel/") == []

    again = subprocess.run(cmd, cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(s3.get_object(Bucket="kill", Key="rel/nightly-1/report.json")["Body"].read())
    assert sum(bool(s.get("resumed")) for s in report["shards"]) >= done_before
    manifest = pq.read_table(io.BytesIO(s3.get_object(Bucket="kill", Key="rel/nightly-1/manifest.parquet")["Body"].read()))
    keys = manifest.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 45
    assert len(_keys(s3, "kill", "rel/nightly-1/images/")) == 45
