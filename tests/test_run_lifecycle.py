"""A run's lifecycle under a hostile but fair operator: run ids that are paths, locations that overlap, a resume
under another policy, runs with nothing new or only deletions, a slow run finishing after a newer one, two
publishers of one run id (real processes), file names that break a chart or a temp name, an incremental
gate over a released set. Real models on real photos (LFW) and small generated images, the local engine
(Ray is not the point here); S3 through moto's server.

Writes the lifecycle table of docs/robustness.md.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO, lfw_images, moto_server

ROWS: dict[str, list] = {}


# ---- helpers --------------------------------------------------------------------------------------------

def _tiny(i: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(i).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _source(root: Path, tiny: int = 2, faces: int = 1) -> Path:
    """`faces` LFW portraits and `tiny` small generated images."""
    src = root / "src"
    src.mkdir(parents=True)
    for p in lfw_images(faces):
        (src / p.name).write_bytes(p.read_bytes())
    for i in range(tiny):
        (src / f"tiny_{i}.jpg").write_bytes(_tiny(i))
    return src


def _run(src, dest, **kw):
    from anonymizer.pipeline import run_pipeline

    return run_pipeline(str(src), str(dest), engine="local", workers=1, **kw)


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anonymizer.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy(), cwd=REPO, timeout=timeout)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest_keys(release: Path) -> list[str]:
    return sorted(pq.read_table(release / "manifest.parquet").column("key").to_pylist())


def _policy(tmp_path: Path, **replace: str) -> str:
    text = (REPO / "policies" / "default.yaml").read_text()
    for a, b in replace.items():
        assert a in text, a
        text = text.replace(a, b)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


# ---- 1. run ids are names, never paths; publishing deletes only what it wrote ---------------------------

@pytest.mark.parametrize("run_id", [".", "..", "../x", "a/b", "/tmp/abs", "", ".hidden", "-dash", "a" * 129, "tab\t"])
def test_unsafe_run_ids_are_refused_before_anything_is_written(tmp_path, run_id):
    from anonymizer.exit_codes import UsageError
    from anonymizer.pipeline import RunContext

    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.jpg").write_bytes(_tiny(0))
    before = _tree(tmp_path)
    with pytest.raises(UsageError, match="run id"):
        RunContext.create(str(src), str(tmp_path / "rel"), run_id=run_id, engine="local")
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_publish_refuses_an_unsafe_run_id(tmp_path):
    import pyarrow as pa

    from anonymizer.exit_codes import UsageError
    from anonymizer.release import publish
    from anonymizer.storage import Location

    (tmp_path / "rel").mkdir()
    (tmp_path / "keep.txt").write_text("not the tool's")
    with pytest.raises(UsageError, match="run id"):
        publish.publish(Location.parse(str(tmp_path / "st")), Location.parse(str(tmp_path / "rel")), "..",
                        pa.table({"key": pa.array([], pa.string())}), {})
    assert (tmp_path / "keep.txt").read_text() == "not the tool's"


def test_cli_run_id_naming_the_source_folder_is_refused_and_the_source_kept(tmp_path, shared):
    """`anonymizer run SRC/photos SRC --run-id photos` once released, then deleted the source folder."""
    src = _source(tmp_path / "data", tiny=1)
    photos = src / "photos"
    photos.mkdir()
    for p in list(src.glob("*.jpg")):
        p.rename(photos / p.name)
    (photos / "never-copied.txt").write_text("a file the tool does not release")
    before = _tree(src)
    r = _cli("run", str(photos), str(src), "--run-id", "photos", "--engine", "local")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "inside" in r.stderr and str(src) in r.stderr
    assert _tree(src) == before
    r = _cli("run", str(photos), str(tmp_path / "rel"), "--run-id", "../escape", "--engine", "local")
    assert r.returncode == 2 and "'../escape'" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "rel").exists() and not (tmp_path / "escape").exists()
    ROWS["run_id"] = ["1", "`--run-id` `.`, `..`, `../x`, `a/b`, an absolute path, a hidden or over-long name; "
                      "`run SRC/photos SRC --run-id photos`",
                      "refused with exit 2 before anything is written (run ids: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, "
                      "a name, never a path; SOURCE inside DEST is refused too); the source is untouched",
                      "`test_unsafe_run_ids_are_refused_...`, `test_cli_run_id_naming_the_source_folder_...`"]


def test_publishing_never_deletes_a_folder_it_did_not_write(tmp_path, shared):
    from anonymizer.exit_codes import UsageError
    from anonymizer.pipeline import run as pipeline
    from anonymizer.release import publish

    src = _source(tmp_path, tiny=1)
    dest = tmp_path / "rel"
    (dest / "taken").mkdir(parents=True)
    (dest / "taken" / "mine.txt").write_text("someone's file, no manifest")
    (dest / ".partial-run.partial").mkdir()
    (dest / ".partial-run.partial" / "mine.txt").write_text("not the tool's either")
    before = _tree(dest)
    for run_id in ("taken", "partial-run"):
        with pytest.raises(UsageError, match="did not write"):
            _run(src, dest, run_id=run_id)
    assert _tree(dest) == before
    # Past the pre-flight check (the folder appears while the run works): publish refuses, deletes nothing.
    ctx = pipeline.RunContext.create(str(src), str(dest), run_id="late", engine="local")
    p = pipeline.plan(ctx)
    summaries = pipeline.anonymize_shards(ctx, p)
    images, faces = pipeline.collect(ctx, p)
    verdict = pipeline.check(ctx, p, images, faces)
    report, files = pipeline.build_report(ctx, p, summaries, images, faces, verdict)
    (dest / "late").mkdir()
    (dest / "late" / "mine.txt").write_text("appeared meanwhile")
    with pytest.raises(publish.ReleaseConflictError, match="did not write"):
        pipeline.finish(ctx, p, verdict, images, report, files)
    assert (dest / "late" / "mine.txt").read_text() == "appeared meanwhile"
    assert not (dest / "LATEST").exists()
    (dest / "late" / "mine.txt").unlink()
    (dest / "late").rmdir()
    # Once the folder is moved away, the same run publishes.
    outcome = pipeline.finish(ctx, p, verdict, images, report, files)
    assert outcome.released and (dest / "LATEST").read_text() == "late"
    assert _tree(dest / "taken") == {"mine.txt": b"someone's file, no manifest"}
    assert sorted(p.name for p in dest.iterdir()) == [".partial-run.partial", "LATEST", "late", "taken"]
    ROWS["no_delete"] = ["1", "DEST/<run id> or DEST/.<run id>.partial exists and was not written by the tool "
                         "(no manifest, no marker)", "refused with exit 2 before the run, or at publish; "
                         "nothing deleted (only a partial release marked by the tool is ever removed)",
                         "`test_publishing_never_deletes_a_folder_it_did_not_write`"]


# ---- 2. a run id is bound to its policy and models ------------------------------------------------------

def test_resume_under_another_policy_or_models_is_refused(tmp_path, shared):
    from anonymizer.components import model_inventory
    from anonymizer.exit_codes import UsageError
    from anonymizer.pipeline import run as pipeline
    from anonymizer.policy import load_policy

    src = _source(tmp_path, tiny=1)
    dest = tmp_path / "rel"
    other = _policy(tmp_path, **{"max_reid_rate: 0.09": "max_reid_rate: 0.08"})
    ctx = pipeline.RunContext.create(str(src), str(dest), policy=other, run_id="bound", engine="local")
    pipeline.plan(ctx)  # planned (and killed) under one policy...
    with pytest.raises(UsageError, match="policy") as err:  # ...resumed under another
        _run(src, dest, run_id="bound")
    assert ctx.policy.sha256[:12] in str(err.value) and "new run id" in str(err.value)
    assert not dest.exists() or not any(dest.iterdir())
    assert not (tmp_path / "rel.staging" / "bound" / "shards").exists()
    # The binding covers the model files: one changed weight file is another binding.
    policy = load_policy()
    inventory = model_inventory(policy)
    altered = [dict(m) for m in inventory]
    altered[0]["sha256"] = "0" * 64
    assert pipeline.run_binding(policy.sha256, inventory) != pipeline.run_binding(policy.sha256, altered)
    assert pipeline.run_binding(policy.sha256, inventory) == pipeline.run_binding(policy.sha256, inventory[::-1])
    # A published run id, its staging gone, re-run under another policy: refused too.
    first = _run(src, dest, run_id="published")
    assert first.released, first.verdict.reason
    shutil.rmtree(tmp_path / "rel.staging" / "published")
    with pytest.raises(UsageError, match="policy"):
        _run(src, dest, policy=other, run_id="published")
    ROWS["binding"] = ["2", "a run id planned (or published) under one policy, resumed under another (or other model "
                       "files)", "refused with exit 2, naming both policy hashes: the plan records the run's binding "
                       "(policy sha256 + every model file's sha256) and a resume must match it",
                       "`test_resume_under_another_policy_or_models_is_refused`"]


# ---- 7. nothing new; only deletions ---------------------------------------------------------------------

def test_no_change_run_has_nothing_to_do_and_a_deletion_only_run_publishes_the_erasure(tmp_path, shared):
    src = _source(tmp_path, tiny=2)
    dest = tmp_path / "rel"
    first = _run(src, dest)
    assert first.released, first.verdict.reason
    r = _cli("run", str(src), str(dest), "--engine", "local", "--workers", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing to do" in r.stderr.lower()
    assert {p.name for p in dest.iterdir()} == {"LATEST", first.run_id}
    assert (dest / "LATEST").read_text() == first.run_id
    (src / "tiny_1.jpg").unlink()  # an erasure request
    erased = _run(src, dest)
    assert erased.released and erased.exit_code == 0, erased.verdict.reason
    assert (dest / "LATEST").read_text() == erased.run_id
    assert _manifest_keys(dest / erased.run_id) == sorted(p.name for p in src.iterdir())
    assert not (dest / erased.run_id / "images" / "tiny_1.jpg").exists()
    meta = pq.read_table(dest / erased.run_id / "manifest.parquet").schema.metadata
    assert json.loads(meta[b"deleted_keys"]) == ["tiny_1.jpg"] and meta[b"previous_release"].decode() == first.run_id
    assert erased.report["counts"]["deleted"] == 1 and erased.report["counts"]["carried"] == 2
    ROWS["no_change"] = ["7", "an incremental run with nothing new, changed or deleted",
                         "`nothing to do`, exit 0, no new release, LATEST unchanged",
                         "`test_no_change_run_has_nothing_to_do_and_a_deletion_only_run_...`"]
    ROWS["deletion_only"] = ["7", "an incremental run whose only change is a deleted source object (an erasure)",
                             "a new release without the object (the rest carried), LATEST moves to it; the manifest "
                             "lists the deleted key",
                             "same test (local) and `test_s3_no_change_deletion_only_...` (S3)"]


# ---- 8. LATEST only moves forward -----------------------------------------------------------------------

def test_latest_only_moves_forward(tmp_path, shared):
    from anonymizer.pipeline import run as pipeline
    from anonymizer.release import publish

    src = _source(tmp_path, tiny=2)
    dest = tmp_path / "rel"
    first = _run(src, dest, run_id="r1")
    assert first.released, first.verdict.reason
    # A slow full run, planned against r1, has done its work...
    slow = pipeline.RunContext.create(str(src), str(dest), run_id="slow-full", full=True, engine="local")
    p = pipeline.plan(slow)
    summaries = pipeline.anonymize_shards(slow, p)
    images, faces = pipeline.collect(slow, p)
    verdict = pipeline.check(slow, p, images, faces)
    report, files = pipeline.build_report(slow, p, summaries, images, faces, verdict)
    assert verdict.passed, verdict.reason
    # ...meanwhile an erasure is published...
    (src / "tiny_1.jpg").unlink()
    second = _run(src, dest, run_id="r2")
    assert second.released and (dest / "LATEST").read_text() == "r2"
    # ...and the slow run, publishing later, must not put its older view (with the erased image) back.
    with pytest.raises(publish.StaleRunError, match="r2"):
        pipeline.finish(slow, p, verdict, images, report, files)
    assert (dest / "LATEST").read_text() == "r2"
    assert sorted(x.name for x in dest.iterdir()) == ["LATEST", "r1", "r2"]
    # Re-running an old, published run id finishes as before and leaves LATEST where it is.
    again = _run(src, dest, run_id="r1")
    assert again.released and again.location.endswith("/r1")
    assert (dest / "LATEST").read_text() == "r2"
    ROWS["latest"] = ["8", "a slow `--full` run finishing after a newer release; an old, published run id re-run",
                      "LATEST moves only by compare-and-swap from the release the run was planned against (the "
                      "manifest's `previous_release`) under DEST's publish lock: the stale run publishes nothing "
                      "(`StaleRunError`, exit 1, names the newer release); the old run id leaves LATEST as it is",
                      "`test_latest_only_moves_forward`, `test_s3_no_change_deletion_only_...`"]


# ---- 9. two publishers of one run id (real processes) ---------------------------------------------------

_PUBLISHER = r"""
import json, os, sys, time
import pyarrow.parquet as pq
from anonymizer.release import publish
from anonymizer.storage import Location

me, other, work, trials = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
manifest = pq.read_table(os.path.join(work, "manifest.parquet"))
files = {n: open(os.path.join(work, "files", n), "rb").read() for n in os.listdir(os.path.join(work, "files"))}
results = []
for i in range(trials):
    open(os.path.join(work, f"ready-{i}-{me}"), "w").close()
    while not os.path.exists(os.path.join(work, f"ready-{i}-{other}")):
        time.sleep(0.001)
    try:
        publish.publish(Location.parse(os.path.join(work, "staging")), Location.parse(os.path.join(work, f"dest-{i}")),
                        "twin", manifest, files)
        results.append("ok")
    except Exception as exc:
        results.append(f"{type(exc).__name__}: {exc}")
print(json.dumps(results))
"""


def test_two_processes_publishing_one_run_id_leave_one_complete_release(tmp_path, shared):
    from anonymizer.pipeline import run as pipeline
    from anonymizer.release.verify import verify_release

    src = _source(tmp_path, tiny=6, faces=2)
    work = tmp_path / "work"
    ctx = pipeline.RunContext.create(str(src), str(work / "unused"), run_id="twin", staging=str(work / "staging-root"),
                                     engine="local")
    p = pipeline.plan(ctx)
    summaries = pipeline.anonymize_shards(ctx, p)
    images, faces = pipeline.collect(ctx, p)
    verdict = pipeline.check(ctx, p, images, faces)
    report, files = pipeline.build_report(ctx, p, summaries, images, faces, verdict)
    assert verdict.passed, verdict.reason
    pq.write_table(pipeline.release_manifest(ctx, p, images, report, files), work / "manifest.parquet")
    (work / "files").mkdir()
    for name, data in files.items():
        if "/" not in name:  # report files; Data Docs are not needed for this test
            (work / "files" / name).write_bytes(data)
    os.symlink(ctx.staging.base, work / "staging")
    trials = 10
    procs = [subprocess.Popen([sys.executable, "-c", _PUBLISHER, me, other, str(work), str(trials)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    outs = [proc.communicate(timeout=600) for proc in procs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    keys = sorted(images["key"])
    broken = []
    for i in range(trials):
        d = work / f"dest-{i}"
        ok = [r[i] for r in results if r[i] == "ok"]
        complete = ((d / "twin" / "manifest.parquet").exists() and _manifest_keys(d / "twin") == keys
                    and sorted(str(x.relative_to(d / "twin" / "images")) for x in (d / "twin" / "images").rglob("*")
                               if x.is_file()) == keys
                    and (d / "LATEST").read_text() == "twin" and verify_release(str(d)).passed
                    and sorted(x.name for x in d.iterdir()) == ["LATEST", "twin"])
        if not (ok and complete):
            broken.append((i, [r[i] for r in results], sorted(x.name for x in d.iterdir())))
    assert broken == [], broken
    ROWS["two_publishers"] = ["9", f"two processes publish the same run id at the same moment ({trials} trials)",
                              "one publishes, the other waits on DEST's publish lock and finds the release done; "
                              f"{trials}/{trials} complete releases, LATEST right, `verify` clean, both callers "
                              "succeed",
                              "`test_two_processes_publishing_one_run_id_...`"]


# ---- 10. one file name never blocks the dataset ---------------------------------------------------------

def test_awkward_file_names_are_released_and_block_nothing(tmp_path, shared):
    src = _source(tmp_path, tiny=1)
    faces = lfw_images(3)
    math = "price$_$tag.jpg"                 # two '$': matplotlib math text, and not a valid formula
    long = "n" * 240 + ".jpg"                # 244 bytes: a name plus a temp suffix would exceed 255
    (src / math).write_bytes(faces[1].read_bytes())
    (src / long).write_bytes(faces[2].read_bytes())
    outcome = _run(src, tmp_path / "rel")
    assert outcome.released, outcome.verdict.reason
    objects = {o["key"]: o["status"] for o in outcome.report["objects"]}
    assert objects[math] == objects[long] == "released"
    release = tmp_path / "rel" / outcome.run_id
    assert (release / "images" / math).is_file() and (release / "images" / long).is_file()
    assert "price$_$tag.jpg" in (release / "report.html").read_text()
    ROWS["names"] = ["10", "a key with two `$` (matplotlib math text); a 244-byte file name",
                     "both released: chart labels are drawn as plain text (`parse_math=False`); temporary names are "
                     "short (`.tmp-<random>`), never the key plus a suffix",
                     "`test_awkward_file_names_are_released_and_block_nothing`"]


# ---- 11. the incremental gate's denominator ------------------------------------------------------------

def test_incremental_gate_counts_failures_over_the_resulting_release(tmp_path, shared):
    src = _source(tmp_path, tiny=9, faces=1)
    dest = tmp_path / "rel"
    first = _run(src, dest)
    assert first.released, first.verdict.reason
    good = lfw_images(2)[1].read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 3])  # one broken upload to a 10-image release
    second = _run(src, dest)
    assert second.released, second.verdict.reason
    gate = next(c for c in second.report["verdict"]["checks"] if c["name"] == "failed_images")
    assert gate["success"] and "carried" in gate["threshold"] and "1/11" in str(gate["observed"])
    assert {o["key"]: o["status"] for o in second.report["objects"]}["truncated.jpg"] == "quarantined"
    assert len(_manifest_keys(dest / second.run_id)) == 10
    # Two broken uploads out of 12 (17 %) are over the 10 % bound: the increment is quarantined.
    (src / "truncated_2.jpg").write_bytes(good[: len(good) // 4])
    third = _run(src, dest)
    assert not third.released and "failed_images" in third.verdict.reason
    ROWS["gate"] = ["11", "one truncated upload to a released 10-image set",
                    "released: `failed_images` is failed / (processed + carried), the objects the resulting "
                    "release accounts for (1/11 ≤ 10 %); two of 12 (17 %) quarantine the increment; the check's "
                    "threshold text states the denominator",
                    "`test_incremental_gate_counts_failures_over_the_resulting_release`"]


# ---- 12, 18. locations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["dest_in_source", "source_in_dest", "staging_in_source", "quarantine_in_source",
                                    "source_in_staging", "same"])
def test_overlapping_source_and_outputs_are_refused(tmp_path, layout):
    from anonymizer.exit_codes import UsageError
    from anonymizer.pipeline import RunContext

    root = tmp_path / "root"
    (root / "inner").mkdir(parents=True)
    (root / "inner" / "tiny.jpg").write_bytes(_tiny(0))
    outer, inner = str(root), str(root / "inner")
    args = {"dest_in_source": dict(source=outer, dest=inner + "/rel"),
            "source_in_dest": dict(source=inner, dest=outer),
            "staging_in_source": dict(source=outer, dest=str(tmp_path / "rel"), staging=inner + "/st"),
            "quarantine_in_source": dict(source=outer, dest=str(tmp_path / "rel"), quarantine=inner + "/q"),
            "source_in_staging": dict(source=inner, dest=str(tmp_path / "rel"), staging=outer),
            "same": dict(source=outer, dest=outer)}[layout]
    before = _tree(tmp_path)
    with pytest.raises(UsageError, match="inside|same"):
        RunContext.create(**args, engine="local")
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    ROWS["overlap"] = ["12", "DEST (or staging, quarantine) inside SOURCE, SOURCE inside any of them, or the same",
                       "refused with exit 2, naming both locations, before anything is written",
                       "`test_overlapping_source_and_outputs_are_refused`"]


def test_missing_source_and_file_source_are_usage_errors_that_write_nothing(tmp_path, shared):
    from anonymizer.pipeline import RunContext

    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(tmp_path / "missing", tmp_path / "rel")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "one.jpg").write_bytes(_tiny(0))
    r = _cli("run", str(tmp_path / "one.jpg"), str(tmp_path / "rel"), "--engine", "local")
    assert r.returncode == 2 and "not a folder" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jpg"]
    with pytest.raises(FileNotFoundError):
        RunContext.create(str(tmp_path / "missing"), str(tmp_path / "rel"), engine="local")


@pytest.fixture
def read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot make a read-only folder as root here: {r.stderr.decode()[:200]}")
    yield ro
    subprocess.run(["umount", str(ro)], check=False)


def test_read_only_dest_is_refused_before_any_work(tmp_path, read_only_dir, shared):
    src = _source(tmp_path, tiny=1)
    r = _cli("run", str(src), str(read_only_dir / "rel"), "--staging", str(tmp_path / "st"), "--engine", "local")
    assert r.returncode == 2 and "not writable" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert not (tmp_path / "st").exists()
    ROWS["minor"] = ["18", "a missing SOURCE; SOURCE a file; a read-only DEST with staging elsewhere",
                     "exit 2 before anything is written (no `policy.yaml` left in staging); DEST's writability is "
                     "probed before the run, not found at publish",
                     "`test_missing_source_and_file_source_...`, `test_read_only_dest_is_refused_...`"]


# ---- S3 (moto's server) --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    with moto_server("lsrc", "lrel") as client:
        yield client


def _s3_keys(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_s3_no_change_deletion_only_and_latest_forward(s3, tmp_path, shared):
    for p in lfw_images(1):
        s3.put_object(Bucket="lsrc", Key=f"a/{p.name}", Body=p.read_bytes())
    for i in range(2):
        s3.put_object(Bucket="lsrc", Key=f"a/tiny_{i}.jpg", Body=_tiny(i))
    loc = dict(staging="s3://lrel/st", quarantine="s3://lrel/q")
    first = _run("s3://lsrc/a", "s3://lrel/r", run_id="s3-r1", **loc)
    assert first.released, first.verdict.reason
    latest = lambda: s3.get_object(Bucket="lrel", Key="r/LATEST")["Body"].read().decode()  # noqa: E731
    nothing = _run("s3://lsrc/a", "s3://lrel/r", **loc)
    assert not nothing.released and nothing.exit_code == 0 and "nothing to do" in nothing.verdict.reason
    assert latest() == "s3-r1" and {k.split("/")[1] for k in _s3_keys(s3, "lrel", "r/")} == {"LATEST", "s3-r1"}
    s3.delete_object(Bucket="lsrc", Key="a/tiny_1.jpg")
    erased = _run("s3://lsrc/a", "s3://lrel/r", run_id="s3-r2", **loc)
    assert erased.released, erased.verdict.reason
    assert latest() == "s3-r2"
    assert not any("tiny_1" in k for k in _s3_keys(s3, "lrel", "r/s3-r2/"))
    again = _run("s3://lsrc/a", "s3://lrel/r", run_id="s3-r1", **loc)  # an old, published run id
    assert again.released and latest() == "s3-r2"
    assert not any(k.endswith((".lock", ".publishing")) for k in _s3_keys(s3, "lrel", "r/"))
    ROWS["s3"] = ["7, 8", "on S3: a no-change run, a deletion-only run, an old published run id re-run",
                  "nothing to do (exit 0); the erasure published; LATEST written only by a conditional PUT "
                  "(If-Match on the LATEST it read, If-None-Match for the first) under a lease-lock object; "
                  "no lock or marker left behind", "`test_s3_no_change_deletion_only_and_latest_forward`"]


def test_docs_table():
    from robustness_doc import table, write_section

    order = ["run_id", "no_delete", "binding", "no_change", "deletion_only", "latest", "s3", "two_publishers", "names",
             "gate", "overlap", "minor"]
    if set(order) - set(ROWS):
        pytest.skip(f"lifecycle tests not run in this session: {sorted(set(order) - set(ROWS))}")
    write_section("lifecycle", table(["item", "what was tried", "what happens", "test"], [ROWS[k] for k in order]))
