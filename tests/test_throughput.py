"""What makes runs faster changes no result: the local engine's threads, batched detection, and the GPU check
(run on the CPU here, so that it keeps working for when a GPU is lent)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import PHOTOS, REPO, lfw_images


def _tables(staging, shards: int) -> tuple[list[dict], list[dict]]:
    from anonymizer.pipeline.shard import shard_dir

    images, faces = [], []
    for i in range(shards):
        d = shard_dir(staging, i)
        images += d.read_table("images.parquet").to_pylist()
        faces += d.read_table("faces.parquet").to_pylist()
    where = {"decode_s", "detect_s", "anonymize_s", "measure_s", "read_s", "write_s", "worker"}  # timings, thread
    return [{k: v for k, v in r.items() if k not in where} for r in images], faces


def test_local_engine_threads_give_the_results_of_one_thread(tmp_path, shared, policy):
    from anonymizer.pipeline.executors import run_local
    from anonymizer.storage import Location
    from anonymizer.vault import FileKey, VaultWriter, new_key_file
    from anonymizer.vault.vault import run_location

    src = tmp_path / "src"
    src.mkdir()
    for p in lfw_images(4):
        shutil.copy(p, src / p.name)
    shutil.copy(PHOTOS / "group_1.jpg", src / "group_1.jpg")
    keys = sorted(p.name for p in src.iterdir())
    shards = [(0, keys[:2]), (1, keys[2:4]), (2, keys[4:])]
    threads_before = cv2.getNumThreads(), torch.get_num_threads()
    results = {}
    key = new_key_file(tmp_path / "kek.b64")
    for workers in (1, 2):
        staging = Location.parse(str(tmp_path / f"staging{workers}"))
        vault = VaultWriter(str(tmp_path / f"vault{workers}"), "run", FileKey(str(key)))
        summaries = run_local(policy, Location.parse(str(src)), staging, shards, len(shards), workers=workers,
                              vault=vault)
        assert [s["shard"] for s in summaries] == [0, 1, 2] and sum(s["images"] for s in summaries) == 5
        results[workers] = _tables(staging, len(shards))
        # Each shard's vault unit holds exactly its own images' face regions, whichever thread ran it.
        staged = run_location(str(tmp_path / f"vault{workers}"), "run").child("staged")
        for shard_id, keys in shards:
            records = staged.read_table(f"{shard_id:06d}.parquet").to_pylist()
            anonymized = sum(r["faces_anonymized"] for r in results[workers][0] if r["key"] in keys)
            assert len(records) == anonymized and {r["image_key"] for r in records} <= set(keys)
    # The same rows; floats within rounding: a network's results can move in the last digits with its thread
    # count, as between machines of different core counts.
    for table in (0, 1):
        assert len(results[1][table]) == len(results[2][table])
        for a, b in zip(results[1][table], results[2][table]):
            assert a.keys() == b.keys()
            for c in a:
                if isinstance(a[c], float) and isinstance(b[c], float):
                    assert math.isclose(a[c], b[c], rel_tol=1e-6, abs_tol=1e-6), (a["key"], c, a[c], b[c])
                else:
                    assert a[c] == b[c], (a["key"], c, a[c], b[c])
    assert sum(f["source"] == "primary" for f in results[2][1]) >= 5
    assert (cv2.getNumThreads(), torch.get_num_threads()) == threads_before  # library threads restored


def test_batched_detection_finds_what_one_image_at_a_time_finds(shared, components):
    frames = [cv2.resize(cv2.cvtColor(cv2.imread(str(PHOTOS / n)), cv2.COLOR_BGR2RGB), (1280, 720))
              for n in ("group_1.jpg", "group_13.jpg")]
    whole = copy.copy(components.detector)
    whole.focus = None  # every scale on whole images
    for ensemble in (components.detector, whole):  # with focus (the policy's) and without
        one = [ensemble.detect(f) for f in frames]
        batched = ensemble.detect_batch(frames)
        for a, b in zip(one, batched):
            assert len(a) == len(b) > 0
            box = lambda fs: np.array([[f.x, f.y, f.w, f.h, f.score] for f in fs])  # noqa: E731
            np.testing.assert_allclose(box(a), box(b), atol=1e-3)


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path, shared):
    """Two processes sharing the device, as on a GPU machine: every frame is counted once."""
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--frames", "4",
                        "--batch", "2", "--processes", "2", "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["frames"] == 4 and result["images_per_s"] > 0 and result["device"] == "cpu"
    assert result["processes"] == 2
    assert result["faces"] > 0 and result["reid_scored"] > 0 and result["pose_measured"] > 0
    assert set(result["stage_s"]) == {"detect", "anonymize+jpeg", "auditor+coverage", "reid", "pose"}
    assert "images/s on cpu" in r.stdout
