"""The face-bank flow: render a StyleGAN bank fanned out over Ray actors, or composite one from a folder.

Thin: the work is in anonymizer.bank. Building is resumable, so a retried task continues where the bank
stopped; the bank's manifest (every file's sha256) and its pose × expression coverage plot end the run.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact


@task(name="build-bank", retries=1, retry_delay_seconds=10)
def build(source: str, out: str, n: int, seed: int, k: int, licence: str, licence_class: str, workers: int | None,
          ray_address: str | None, model_dir: str | None, landmarks: str, candidates: int | None) -> str:
    from anonymizer import bank

    if source == "stylegan":
        return str(bank.build_from_stylegan(out, n=n, seed=seed, model_dir=model_dir, engine="ray", workers=workers,
                                            ray_address=ray_address, landmarks=landmarks, candidates=candidates))
    return str(bank.build_from_folder(source, out, n=n, k=k, seed=seed, licence=licence, licence_class=licence_class,
                                      model_dir=model_dir, landmarks=landmarks))


@flow(name="build-face-bank", log_prints=True)
def build_face_bank(out: str, source: str = "stylegan", n: int | None = None, seed: int = 0, k: int = 8,
                    licence: str = "user-supplied", licence_class: str = "permissive", workers: int | None = None,
                    ray_address: str | None = None, model_dir: str | None = None,
                    landmarks: str = "dlib_shape68", candidates: int | None = None) -> dict:
    from anonymizer.bank import default_size, load_bank

    n = default_size(source) if n is None else n
    loaded = load_bank(build(source, out, n, seed, k, licence, licence_class, workers, ray_address, model_dir,
                             landmarks, candidates))
    m = loaded.manifest
    summary = {"bank": str(loaded.root), "faces": m["faces"], "identities": m["identities"], "licence": m["licence"],
               "licence_class": m.get("licence_class"), "coverage_plot": str(loaded.root / "coverage.png")}
    create_markdown_artifact(key="face-bank", description="The face bank built, and its licence",
                             markdown=f"# Face bank {loaded.root}\n\n" + "\n".join(f"- {k}: {v}" for k, v in summary.items()))
    return summary
