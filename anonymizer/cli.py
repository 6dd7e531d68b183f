"""`anonymizer` command line: run a dataset through the pipeline, manage models, evaluate components."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

from anonymizer import exit_codes

# Prefect without a server starts a temporary one: slow to start on small machines; no telemetry.
_ENV_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _orchestrated_engines() -> dict:
    """Engines that orchestrators plug in (entry points `anonymizer.engines`: the Prefect flow is one), so
    the library never imports its orchestrator."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="anonymizer.engines")}


def _run(args: argparse.Namespace) -> int:
    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    kwargs = dict(source=args.source, dest=args.dest, policy=args.policy, workers=args.workers, run_id=args.run_id,
                  staging=args.staging, quarantine=args.quarantine, full=args.full, ray_address=args.ray_address,
                  vault=args.vault, vault_key=args.vault_key, identity_key=args.identity_key)
    plugged = _orchestrated_engines()
    if args.engine in plugged:
        result = plugged[args.engine].load()(**kwargs, executor=args.executor)
    elif args.engine in ("ray", "local"):
        from anonymizer.pipeline import run_pipeline

        result = run_pipeline(**kwargs, engine=args.engine).summary()
    else:
        known = ", ".join(["ray", "local", *plugged])
        print(f"anonymizer: error: engine {args.engine!r} is not installed (known: {known})", file=sys.stderr)
        return exit_codes.USAGE
    print(json.dumps(result, indent=2, default=str))
    state = ("RELEASED" if result["released"] else "NOTHING TO DO" if result.get("nothing_to_do")
             else "NOT RELEASED (quarantined)")
    print(f"{state}: {result['reason']}\nreport: {result['location']}/report.html", file=sys.stderr)
    return result["exit_code"]


def _recover(args: argparse.Namespace) -> int:
    from anonymizer.vault import key_provider_from, recover

    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    result = recover(args.release, args.vault, key_provider_from(args.key), args.out)
    print(json.dumps(result.__dict__, indent=2, default=str))
    print(f"recovered {result.images} images ({result.faces} face regions) into {result.out_dir}", file=sys.stderr)
    return exit_codes.RELEASED


def _vault(args: argparse.Namespace) -> int:
    from anonymizer import vault

    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    if args.action == "keygen":
        print(vault.new_key_file(args.location))
    elif args.action == "destroy":
        for run_id in vault.destroy(args.location, args.run_id):
            print(f"destroyed: run {run_id}'s data key is gone; its originals can no longer be recovered")
    else:
        for run_id in ([args.run_id] if args.run_id else vault.runs(args.location)):
            print(json.dumps({"run_id": run_id, "status": vault.vault_status(args.location, run_id)}))
    return exit_codes.RELEASED


def _bank(args: argparse.Namespace) -> int:
    from anonymizer import bank, models

    out = args.out or models.USER_MODEL_DIR / "banks" / args.name
    n = bank.default_size(args.source) if args.n is None else args.n
    if args.source == "stylegan":
        path = bank.build_from_stylegan(out, n=n, seed=args.seed, threads=args.threads, model_dir=args.model_dir,
                                        engine=args.engine, workers=args.workers, landmarks=args.landmarks,
                                        backend=args.backend, candidates=args.candidates)
    else:
        path = bank.build_from_folder(args.source, out, n=n, k=args.k, seed=args.seed, licence=args.licence,
                                      licence_class=args.licence_class, model_dir=args.model_dir,
                                      landmarks=args.landmarks)
    loaded = bank.load_bank(path)
    print(json.dumps({"bank": str(path), "faces": len(loaded), "licence": loaded.licence,
                      "coverage_plot": str(path / "coverage.png")}, indent=2))
    return exit_codes.RELEASED


def _models(args: argparse.Namespace) -> int:
    from anonymizer import models

    if args.action == "fetch":
        print(models.fetch(args.name, args.dir or models.USER_MODEL_DIR))
        return exit_codes.RELEASED
    for name in models.MODELS:
        try:
            print(json.dumps({**models.describe(name, args.dir), "path": str(models.locate(name, args.dir))}))
        except (FileNotFoundError, ValueError) as exc:
            print(json.dumps({"name": name, "error": str(exc)}))
    return exit_codes.RELEASED


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line. The `eval` commands' modules (seconds of imports) are loaded only when `argv` asks
    for `eval` (all of them without `argv`)."""
    ap = argparse.ArgumentParser(prog="anonymizer", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="anonymize SOURCE and release it to DEST if it passes the policy")
    run.add_argument("source", help="folder or s3://bucket/prefix holding the images")
    run.add_argument("dest", help="release location; a release goes to DEST/<run id>/, pointed to by DEST/LATEST")
    run.add_argument("--policy", help="policy YAML (default: the embedded policies/default.yaml)")
    run.add_argument("--workers", type=int, help="Ray actors (default: execution.actors_per_gpu per GPU, else one "
                     "per CPU); engine local: threads, each with its own models (default: one per CPU, at most 8)")
    run.add_argument("--run-id", help="re-use a run id to resume it (completed shards are skipped)")
    run.add_argument("--staging", help="staging root (default: DEST.staging)")
    run.add_argument("--quarantine", help="quarantine root (default: DEST.quarantine)")
    run.add_argument("--full", action="store_true",
                     help="process every object, not only those new or changed since the latest release")
    run.add_argument("--ray-address", help="an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--endpoint-url", help="S3 endpoint (MinIO, Ceph...; default: $AWS_ENDPOINT_URL, else AWS)")
    run.add_argument("--engine", default="prefect",
                     help="prefect (default): the Prefect flow, shards where --executor puts them; ray: the library "
                          "alone, shards on Ray; local: one process, no Ray and no Prefect (small jobs, debugging)")
    run.add_argument("--executor", default="auto", choices=["auto", "ray", "local"],
                     help="engine prefect: where its shards run; auto (default): Ray for a cluster (--ray-address, "
                          "$RAY_ADDRESS) or more than 200 images, else threads in this process, without Ray's start")
    run.add_argument("--vault", help="keep the original face regions, encrypted, at this location (local or "
                                     "s3://, never under DEST): the release is then pseudonymised, not anonymised")
    run.add_argument("--vault-key", help="the vault's key-encryption key: file:PATH, env:VAR (base64) or kms:KEY_ID")
    run.add_argument("--identity-key", help="keyed virtual faces: the same person shows the same virtual person in "
                                            "every image (bank operator); file:PATH or env:VAR (32 bytes; "
                                            "`anonymizer vault keygen` makes one). With --vault, the people seen "
                                            "are kept there, encrypted, for later runs")
    run.set_defaults(func=_run)

    rc = sub.add_parser("recover", help="write the originals of a release from its vault (needs the vault's key)")
    rc.add_argument("release", help="a release DEST/<run id> (or DEST: its LATEST)")
    rc.add_argument("--vault", required=True, help="the vault location the run wrote")
    rc.add_argument("--key", required=True, help="file:PATH, env:VAR or kms:KEY_ID")
    rc.add_argument("--out", required=True, help="a new or empty folder (or s3:// prefix) for the originals (PNG)")
    rc.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    rc.set_defaults(func=_recover)

    vt = sub.add_parser("vault", help="make a key file, show a vault's runs, or destroy their keys (crypto-shredding)")
    vt.add_argument("action", choices=["keygen", "status", "destroy"])
    vt.add_argument("location", help="the vault (status, destroy) or the new key file's path (keygen)")
    vt.add_argument("--run-id", help="one run only (default: every run in the vault)")
    vt.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    vt.set_defaults(func=_vault)

    bk = sub.add_parser("bank", help="build a face bank: photographic faces of nobody, for the `bank` operator")
    bk_sub = bk.add_subparsers(dest="action", required=True)
    b = bk_sub.add_parser("build", help="from a folder of faces you may use (composites of k people), or "
                                        "'stylegan' (synthetic people; non-commercial weights, needs openvino)")
    b.add_argument("source", help="a folder of face photos (one subfolder per person, or files named "
                                  "<person>_NNNN.jpg), or the word stylegan")
    b.add_argument("--name", default="faces", help="the bank's name; a policy names it in the operator's `bank`")
    b.add_argument("--out", help="the bank directory (default: ~/.cache/anonymizer/models/banks/NAME)")
    b.add_argument("--n", type=int, help="bank faces (folder; default 64) or virtual people (stylegan; default 256)")
    b.add_argument("--candidates", type=int,
                   help="stylegan: people rendered once to choose the N from, spread over skin tones, with more "
                        "rendered around the centre of a tone short of its share (default: 10 N; 0: the first N)")
    b.add_argument("--k", type=int, default=8, help="people averaged into each composite (at least 8)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--licence", default="user-supplied", help="the faces' licence, recorded in the bank")
    b.add_argument("--licence-class", default="permissive", choices=["permissive", "non-commercial", "research"])
    b.add_argument("--threads", type=int, default=1, help="stylegan: CPU threads for the renderer")
    b.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="stylegan: render in this process, or fan out over Ray actors (a cluster: $RAY_ADDRESS)")
    b.add_argument("--workers", type=int, help="stylegan --engine ray: actors (default: one per GPU, else per CPU)")
    b.add_argument("--backend", default="auto", choices=["auto", "openvino", "torch"],
                   help="stylegan: OpenVINO on CPUs, or torch (CUDA GPUs, several faces per pass); auto: torch "
                        "where CUDA is available")
    b.add_argument("--landmarks", default="dlib_shape68", choices=["dlib_shape68", "mediapipe_mesh"],
                   help="the landmarker the bank is built with and the operator uses: dlib's 68 points (iBUG 300-W, "
                        "research use) or MediaPipe's face mesh (Apache-2.0; pip install ai-edge-litert)")
    b.add_argument("--model-dir", help="where the StyleGAN and recognizer weights are")
    b.set_defaults(func=_bank)

    m = sub.add_parser("models", help="list the model files in use, or fetch one (needs a network)")
    m.add_argument("action", choices=["list", "fetch"])
    m.add_argument("name", nargs="?", default=None)
    m.add_argument("--dir", help="model directory")
    m.set_defaults(func=_models)

    from anonymizer.release import verify

    v = sub.add_parser("verify", help="prove a release is clean: no metadata, every output decodes, the manifest "
                                      "matches the bytes, nothing outside it; exit 3 on any finding")
    verify.add_arguments(v)
    v.set_defaults(func=verify.run)

    from anonymizer.release import retention

    st = sub.add_parser("staging", help="remove run folders under DEST.staging and DEST.quarantine older than a "
                                        "retention (a released run keeps its lineage.parquet)")
    retention.add_arguments(st)
    st.set_defaults(func=retention.run)

    ev = sub.add_parser("eval", help="evaluate components on labelled data")
    ev_sub = ev.add_subparsers(dest="what", required=True)
    evals = _EVALS if argv is None or "eval" in argv else {}
    for name, module in evals.items():
        mod = __import__(module, fromlist=["add_arguments", "run"])
        p = ev_sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return ap


_EVALS: dict[str, str] = {"detection": "anonymizer.eval.detection", "reid": "anonymizer.eval.reid",
                         "generation": "anonymizer.eval.generation", "calibrate": "anonymizer.eval.calibrate",
                         "linking": "anonymizer.eval.linking", "attackers": "anonymizer.eval.attackers"}


def main(argv: list[str] | None = None) -> int:
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from anonymizer import logs
    from anonymizer.models import ModelNotFoundError
    from anonymizer.policy import PolicyError
    from anonymizer.bank import BankError
    from anonymizer.vault import KeySpecError, VaultError, VaultLocationError

    logs.setup()
    args = parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    try:
        return args.func(args)
    except (PolicyError, ModelNotFoundError, FileNotFoundError, KeySpecError, VaultError, VaultLocationError,
            BankError, exit_codes.UsageError) as exc:
        print(f"anonymizer: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except Exception as exc:  # noqa: BLE001 - report, never a bare traceback for a user
        print(f"anonymizer: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_codes.ERROR


def entry() -> None:
    """The `anonymizer` command. Once `main` has returned, every output is written and closed: the objects
    left are frozen out of the collector, whose passes over them at interpreter shutdown took about 2 s with
    torch and great_expectations loaded. atexit handlers and reference-counted finalizers still run."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
