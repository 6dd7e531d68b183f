"""`anonymizer` command line: run a dataset through the pipeline, manage models, evaluate components."""

from __future__ import annotations

import argparse
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
                  staging=args.staging, quarantine=args.quarantine, full=args.full, ray_address=args.ray_address)
    plugged = _orchestrated_engines()
    if args.engine in plugged:
        result = plugged[args.engine].load()(**kwargs)
    elif args.engine in ("ray", "local"):
        from anonymizer.pipeline import run_pipeline

        result = run_pipeline(**kwargs, engine=args.engine).summary()
    else:
        known = ", ".join(["ray", "local", *plugged])
        print(f"anonymizer: error: engine {args.engine!r} is not installed (known: {known})", file=sys.stderr)
        return exit_codes.USAGE
    print(json.dumps(result, indent=2, default=str))
    state = "RELEASED" if result["released"] else "NOT RELEASED (quarantined)"
    print(f"{state}: {result['reason']}\nreport: {result['location']}/report.html", file=sys.stderr)
    return result["exit_code"]


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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anonymizer", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="anonymize SOURCE and release it to DEST if it passes the policy")
    run.add_argument("source", help="folder or s3://bucket/prefix holding the images")
    run.add_argument("dest", help="release location; a release goes to DEST/<run id>/, pointed to by DEST/LATEST")
    run.add_argument("--policy", help="policy YAML (default: the embedded policies/default.yaml)")
    run.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per 2 CPUs)")
    run.add_argument("--run-id", help="re-use a run id to resume it (completed shards are skipped)")
    run.add_argument("--staging", help="staging root (default: DEST.staging)")
    run.add_argument("--quarantine", help="quarantine root (default: DEST.quarantine)")
    run.add_argument("--full", action="store_true",
                     help="process every object, not only those new or changed since the latest release")
    run.add_argument("--ray-address", help="an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--endpoint-url", help="S3 endpoint (MinIO, Ceph...; default: $AWS_ENDPOINT_URL, else AWS)")
    run.add_argument("--engine", default="prefect",
                     help="prefect (default): the Prefect flow, shards on Ray; ray: the library alone, shards on "
                          "Ray; local: one process, no Ray and no Prefect (small jobs, debugging)")
    run.set_defaults(func=_run)

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

    ev = sub.add_parser("eval", help="evaluate components on labelled data")
    ev_sub = ev.add_subparsers(dest="what", required=True)
    for name, module in _EVALS.items():
        mod = __import__(module, fromlist=["add_arguments", "run"])
        p = ev_sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return ap


_EVALS: dict[str, str] = {"detection": "anonymizer.eval.detection", "reid": "anonymizer.eval.reid",
                         "generation": "anonymizer.eval.generation"}


def main(argv: list[str] | None = None) -> int:
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from anonymizer import logs
    from anonymizer.models import ModelNotFoundError
    from anonymizer.policy import PolicyError

    logs.setup()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (PolicyError, ModelNotFoundError, FileNotFoundError) as exc:
        print(f"anonymizer: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except Exception as exc:  # noqa: BLE001 - report, never a bare traceback for a user
        print(f"anonymizer: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_codes.ERROR


if __name__ == "__main__":
    sys.exit(main())
