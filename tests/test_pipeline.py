"""End to end, with real components: a Prefect flow run (temporary server), a local Ray, real models."""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from anonymizer import imageio
from conftest import PHOTOS, REPO, lfw_images

PHOTO_NAMES = ["group_13.jpg", "group_8.jpg", "group_1.jpg", "group_2.jpg", "multiface.jpg", "group_5.jpg"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, shared):
    """6 group photos + 13 LFW portraits in a sub-folder + 2 broken files + 1 non-image: 22 objects."""
    src = tmp_path_factory.mktemp("src")
    for name in PHOTO_NAMES:
        shutil.copy(PHOTOS / name, src / name)
    (src / "people").mkdir()
    for p in lfw_images(13):
        shutil.copy(p, src / "people" / p.name)
    good = (PHOTOS / "group_13.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    return src


@pytest.fixture(scope="module")
def flow_run(dataset, tmp_path_factory, ray_cluster, prefect_server):
    from flows.anonymize_dataset import anonymize_dataset

    out = tmp_path_factory.mktemp("out")
    state = anonymize_dataset(str(dataset), str(out / "release"), workers=2, return_state=True)
    return state, out


def test_flow_run_completes_and_releases(flow_run):
    state, out = flow_run
    assert state.is_completed(), state
    result = state.result()
    assert result["released"] and result["exit_code"] == 0, result["reason"]
    run_id = result["run_id"]
    assert (out / "release" / "LATEST").read_text() == run_id
    assert {p.name for p in (out / "release").iterdir()} == {"LATEST", run_id}
    # This process has joined Ray (the ray_cluster fixture): `auto` runs the shards there, and says why
    execution = json.loads((out / "release" / run_id / "report.json").read_text())["execution"]
    assert execution == {"executor": "ray", "why": "auto: a Ray cluster is named or already joined"}


def test_auto_executor_keeps_small_plans_in_process_and_sends_large_ones_or_a_cluster_to_ray():
    # In a fresh process: this one may have joined Ray already (the ray_cluster fixture)
    code = ("import json, os; from anonymizer.pipeline.executors import LOCAL_UP_TO as n, choose; "
            "os.environ.pop('RAY_ADDRESS', None); "
            "print(json.dumps([choose('auto', n, None)[0], choose('auto', n + 1, None)[0], "
            "choose('auto', 1, 'ray://head:10001')[0], choose('local', 10 ** 6, None)[0], "
            "choose('ray', 1, None)[0], n]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    *chosen, limit = json.loads(r.stdout)
    assert chosen == ["local", "ray", "ray", "local", "ray"]
    assert f"more than {limit} images" in " ".join(_cli("run", "--help").stdout.split())  # the help says it


def test_actors_share_gpus_in_whole_fractions_and_never_outnumber_the_cpus():
    from anonymizer.pipeline.executors import actor_shape
    from anonymizer.policy import Execution

    four = Execution()  # 4 actors a GPU
    assert actor_shape({"CPU": 16, "GPU": 1}, four, 100) == (4, 0.25, 4)
    assert actor_shape({"CPU": 32, "GPU": 2}, four, 100) == (8, 0.25, 4)
    assert actor_shape({"CPU": 16, "GPU": 2}, four, 100, workers=3) == (3, 0.5, 5)  # 2 and 1 on the GPUs
    assert actor_shape({"CPU": 2, "GPU": 1}, four, 100) == (2, 0.5, 1)  # 0.8 CPU each: 2 fit
    assert actor_shape({"CPU": 16, "GPU": 1}, four, 2) == (2, 0.5, 8)  # no more than the shards
    assert actor_shape({"CPU": 8}, four, 100) == (8, 0, 1)  # without a GPU, one actor per CPU
    assert actor_shape({"CPU": 2}, four, 100) == (2, 0, 1)
    assert actor_shape({"CPU": 8}, Execution(), 100, workers=20) == (10, 0, 1)


def test_actors_sharing_a_gpu_run_the_shards(tmp_path, shared):
    """In a fresh Ray that declares one GPU (none is there: the networks fall back to the CPU), two actors
    share it, each runs shards, and the run is released."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ["multiface.jpg", "group_5.jpg", "group_2.jpg", "group_8.jpg"]:
        shutil.copy(PHOTOS / name, src / name)
    policy = tmp_path / "p.yaml"
    policy.write_text((REPO / "policies" / "default.yaml").read_text().replace("shard_size: 4 ", "shard_size: 1 ")
                      .replace("actors_per_gpu: 4 ", "actors_per_gpu: 2 "))
    code = ("import json, ray; from anonymizer.pipeline import run_pipeline; "
            "ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level='WARNING'); "
            f"o = run_pipeline({str(src)!r}, {str(tmp_path / 'rel')!r}, policy={str(policy)!r}, engine='ray'); "
            "print(json.dumps([o.released, o.location, [(s['worker'], s['gpu_share']) for s in o.report['shards']]]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    released, location, shards = json.loads(r.stdout.strip().splitlines()[-1])
    assert released and len(shards) == 4 and len({w for w, _ in shards}) == 2 and {g for _, g in shards} == {0.5}
    page = " ".join((Path(location) / "report.html").read_text().split())
    assert "Run on Ray actors (asked for): 2 of them, each holding 0.5 of a GPU." in page


def test_a_shard_detected_together_finds_what_each_image_alone_finds(tmp_path, shared, components):
    """`batch_detection: always` (a GPU's default) on the CPU: the shard's images go to `detect_batch` together,
    a broken object is still quarantined with its reason, and the faces are those `detect` finds one by one."""
    from anonymizer.faces import Face, iou
    from anonymizer.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    names = ["group_1.jpg", "group_5.jpg", "group_26.jpg"]  # group_5: a 30 px face only a focus window shows
    for name in names:
        shutil.copy(PHOTOS / name, src / name)
    (src / "truncated.jpg").write_bytes((PHOTOS / "group_8.jpg").read_bytes()[:5000])
    policy = tmp_path / "p.yaml"
    policy.write_text((REPO / "policies" / "default.yaml").read_text().replace("shard_size: 4 ", "shard_size: 8 ")
                      .replace("batch_detection: auto ", "batch_detection: always "))
    o = run_pipeline(str(src), str(tmp_path / "rel"), policy=str(policy), engine="local", workers=1)
    objects = {x["key"]: x for x in o.report["objects"]}
    assert "truncated" in objects["truncated.jpg"]["reason"]
    # one broken object of four is more than the policy's 10 %: the only check that fails
    assert [c.name for c in o.verdict.checks if not c.success] == ["failed_images"]
    staged = tmp_path / "rel.staging" / o.run_id / "metrics"
    images = pq.read_table(staged / "images.parquet").to_pandas().set_index("key")
    assert images.loc[names, "detect_s"].nunique() == 1  # each image's share of the one batch
    faces = pq.read_table(staged / "faces.parquet").to_pandas()
    for name in names:
        rgb = imageio.decode((src / name).read_bytes(), 10 ** 8).rgb
        together = [Face(f.x, f.y, f.w, f.h, f.score, f.detector)
                    for f in faces[(faces["key"] == name) & (faces["source"] == "primary")].itertuples()]
        alone = components.detector.detect(rgb)
        assert len(together) == len(alone) > 2, name
        assert all(max(iou(f, g) for g in together) >= 0.5 for f in alone), name


def test_release_holds_only_anonymized_clean_outputs(flow_run, dataset):
    _, out = flow_run
    run_dir = next(p for p in (out / "release").iterdir() if p.is_dir())
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    assert len(manifest) == 19
    assert {m["key"] for m in manifest} == {p.name for p in dataset.glob("*.jpg") if p.name != "truncated.jpg"} | {
        f"people/{p.name}" for p in (dataset / "people").iterdir()}
    released = {str(p.relative_to(run_dir / "images")) for p in (run_dir / "images").rglob("*") if p.is_file()}
    assert released == {m["key"] for m in manifest}
    # The sources' hashes are lineage for the operator, in staging, never in the public manifest.
    lineage = {r["key"]: r for r in pq.read_table(out / "release.staging" / run_dir.name / "lineage.parquet").to_pylist()}
    for m in manifest:
        data = (run_dir / m["output_key"]).read_bytes()
        original = (dataset / m["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["output_sha256"] and "source_sha256" not in m
        assert hashlib.sha256(original).hexdigest() == lineage[m["key"]]["source_sha256"]
        assert data != original
        assert imageio.metadata_fields(data) == {}
        assert Image.open(io.BytesIO(data)).size == Image.open(io.BytesIO(original)).size


def test_report_accounts_for_every_input(flow_run, dataset):
    _, out = flow_run
    run_dir = next(p for p in (out / "release").iterdir() if p.is_dir())
    report = json.loads((run_dir / "report.json").read_text())
    listed = {str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file()}
    objects = {o["key"]: o for o in report["objects"]}
    assert set(objects) == listed and len(report["objects"]) == len(listed)
    assert objects["notes.txt"]["status"] == "skipped" and ".txt" in objects["notes.txt"]["reason"]
    assert objects["empty.png"]["status"] == "quarantined" and "empty" in objects["empty.png"]["reason"]
    assert objects["truncated.jpg"]["status"] == "quarantined" and "truncated" in objects["truncated.jpg"]["reason"]
    assert report["counts"] == {"released": 19, "carried": 0, "quarantined": 2, "skipped": 1, "deleted": 0, "listed": 22}
    m = report["metrics"]
    assert m["faces_anonymized"] == m["faces_detected"] > 100
    assert 0 <= m["naive_reidentification_rate"] <= 0.09 and m["uncovered_faces"] == 0
    # The default blurs and neither measures nor gates pose (the profiles that keep a face do: test_generate).
    faces = pq.read_table(out / "release.staging" / report["run_id"] / "metrics" / "faces.parquet").to_pandas()
    assert faces["yaw_before"].isna().all() and faces["reid_distance"].notna().any()
    assert m["pose_measured_faces"] == 0 and m["methods"] == {"blur": m["faces_detected"]}
    assert {c["name"] for c in report["verdict"]["checks"]} >= {"naive_reidentification", "uncovered_faces"}
    assert any(mo["sha256"] == "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4" for mo in report["models"])
    assert report["software"]["prefect"] and report["policy"]["sha256"]
    html = (run_dir / "report.html").read_text()
    assert html.index("RELEASED") < html.index("<h1>") and "data:image/png;base64" in html
    assert "data:image/jpeg" not in html and 'alt="sample_anonymized_outputs"' in html
    quarantined = pq.read_table(out / "release.quarantine" / report["run_id"] / "objects.parquet").to_pylist()
    assert {q["key"] for q in quarantined} == {"truncated.jpg", "empty.png"}


def test_resume_redoes_only_unfinished_shards(dataset, tmp_path, ray_cluster):
    from anonymizer.pipeline import run as pipeline
    from anonymizer.pipeline.shard import shard_dir

    ctx = pipeline.RunContext.create(str(dataset), str(tmp_path / "rel"), run_id="resume-test")
    p = pipeline.plan(ctx)
    assert pipeline.plan(ctx) == p  # a re-run re-uses the stored plan
    first = pipeline.anonymize_shards(ctx, p, workers=2)
    assert len(first) == p.shards and not any(s.get("resumed") for s in first)
    shard_dir(ctx.staging, 1).delete("_SUCCESS")  # as if the run died while shard 1 was in flight
    again = pipeline.anonymize_shards(ctx, p, workers=1)
    assert [s["shard"] for s in again if not s.get("resumed")] == [1]
    assert len(again) == p.shards and [s["attempts"] for s in again if s["shard"] == 1] == [2]


def _cli(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "anonymizer.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=900)


def test_policy_no_run_can_meet_publishes_nothing(tmp_path, shared):
    src = tmp_path / "src"
    src.mkdir()
    for name in PHOTO_NAMES[:3]:
        shutil.copy(PHOTOS / name, src / name)
    policy = (REPO / "policies" / "default.yaml").read_text().replace(
        "same_person_distance: 0.527", "same_person_distance: 9.0").replace("max_reid_rate: 0.09", "max_reid_rate: 0.0")
    (tmp_path / "impossible.yaml").write_text(policy)
    r = _cli("run", str(src), str(tmp_path / "rel"), "--policy", str(tmp_path / "impossible.yaml"), "--workers", "1")
    assert r.returncode == 3, r.stderr[-3000:]
    assert not (tmp_path / "rel").exists() or not any((tmp_path / "rel").iterdir())
    qdir = next((tmp_path / "rel.quarantine").iterdir())
    validation = json.loads((qdir / "validation.json").read_text())
    assert not validation["passed"]
    assert [c["name"] for c in validation["checks"] if not c["success"]] == ["naive_reidentification"]
    assert json.loads((qdir / "report.json").read_text())["counts"]["quarantined"] == 3
    assert "NOT RELEASED" in r.stderr


def test_cli_keeps_prefects_refusal_where_temporary_servers_are_off(tmp_path, shared):
    # The CLI launches Prefect's temporary server early, but only where Prefect itself would start one
    r = _cli("run", str(PHOTOS), str(tmp_path / "rel"), env={"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"})
    assert r.returncode == 1, r.stderr[-3000:]
    assert "No Prefect API URL provided" in r.stderr and "prefect_temporary_server" not in r.stderr
    assert not (tmp_path / "rel").exists()


def test_missing_model_is_a_clear_error(tmp_path, shared):
    env = {"ANONYMIZER_MODEL_DIR": str(tmp_path / "nowhere")}
    r = _cli("run", str(PHOTOS), str(tmp_path / "rel"), "--engine", "ray", env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert "face_detection_yunet_2023mar.onnx" in r.stderr and "nowhere/yunet" in r.stderr


@pytest.mark.slow
def test_cli_releases_all_sample_photos(tmp_path, shared):
    r = _cli("run", str(PHOTOS), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    # Prefect's temporary server is launched first thing (flows.cli_engine), the flow uses it (Prefect starts
    # none of its own), and it is stopped with the run
    assert "Starting temporary server" not in r.stderr, r.stderr[-3000:]
    url = json.loads(next(line for line in r.stderr.splitlines() if "prefect_temporary_server" in line
                          and line.startswith("{")))["url"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=5)
    result = json.loads(r.stdout[r.stdout.rindex("{\n  \"run_id\""):])  # Ray may print worker notices first
    run_dir = tmp_path / "out" / result["run_id"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["counts"]["released"] == 21 == len(list((run_dir / "images").iterdir()))
    assert report["execution"]["executor"] == "local" and report["execution"]["why"].startswith("auto: 21 images")
    assert "naive_reidentification_rate" in report["metrics"] and "uncovered_faces" in report["metrics"]
    page = html.unescape(" ".join((run_dir / "report.html").read_text().split()))
    assert "Run on threads in the run's own process (auto: 21 images" in page and "): 2 of them." in page


def test_killed_actor_is_replaced_and_its_shard_retried(tmp_path, ray_cluster, shared):
    import signal
    import threading
    import time
    from pathlib import Path

    from anonymizer.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    for name in ["multiface.jpg", "group_5.jpg", "group_2.jpg", "group_8.jpg"]:
        shutil.copy(PHOTOS / name, src / name)
    policy = tmp_path / "p.yaml"
    policy.write_text((REPO / "policies" / "default.yaml").read_text().replace("shard_size: 4 ", "shard_size: 2 "))
    result = {}
    run = threading.Thread(target=lambda: result.update(o=run_pipeline(
        str(src), str(tmp_path / "rel"), policy=str(policy), workers=1, run_id="kill-actor")))
    run.start()
    shards = tmp_path / "rel.staging" / "kill-actor" / "shards"
    killed = False
    deadline = time.time() + 300
    while not killed and time.time() < deadline:
        in_flight = [d for d in shards.glob("*") if (d / "_ATTEMPTS").exists() and not (d / "_SUCCESS").exists()]
        actors = [pid for pid in _shard_actor_pids() if _descends_from(pid, os.getpid())] if in_flight else []
        if actors:
            os.kill(actors[0], signal.SIGKILL)  # a worker dies mid-shard
            killed = True
        time.sleep(0.05)
    run.join(600)
    assert killed and result["o"].released, result["o"].verdict.reason
    report = result["o"].report
    assert report["retried_shards"] and all(
        s["attempts"] == 2 for s in report["shards"] if s["shard"] in report["retried_shards"])
    assert report["counts"]["released"] == 4


def _shard_actor_pids() -> list[int]:
    from pathlib import Path

    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"_ShardActor" in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            pass
    return out


def _descends_from(pid: int, ancestor: int) -> bool:
    """Only this test session's Ray workers (another test run may share the machine)."""
    from pathlib import Path

    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False
