"""Train the generator on a machine without Ray or Prefect (the lent GPU machine), from a cache or a JPEG
shard (`training.data.pack_shard`), resuming `<out>/checkpoint/state.pt` when it is there.

The flow `flows/train_generator.py` is the way to train where Ray runs; this is the same `fit` loop
(`train.fit_local`) for a bare box, plus what such a box needs: a sample grid to look at, and the exported
weights copied to `--export-to` in parts small enough to be fetched (`--part-mib`).

    python -m training.train_local --data shard.npz --out run/ --config training/generator_128.json --steps 200000 \
        --budget-s 540 [--init-generator generator.pt] [--export-to DIR]

`training/generator_128.json` is the recipe for the 128×128 generator on a GPU (docs/generation.md,
"The next GPU run").
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from anonymizer.anonymize.generated.operator import load_generator
from training import data, train


def sample_grid(weights: str, cache: str, path: Path, n: int = 8, seeds: int = 3) -> None:
    """Rows: real crop, its masked context, then `seeds` generated faces (training crops: a quick look only;
    the held-out evaluation is `anonymizer eval generation`)."""
    import cv2

    G, card = load_generator(Path(weights))  # checked against its card's sha256
    net = card["network"]
    res = net["resolution"]
    crops, lms = train.load_tensors(cache, res)
    idx = torch.linspace(0, crops.shape[0] - 1, n).long()
    real = crops[idx].float() / 127.5 - 1
    hole, coords = train.conditioning(res, "cpu")
    hm = train.batch_heatmaps(lms[idx], coords, res)
    mask = hole.expand(n, -1, -1, -1)
    rows = [real, real * (1 - mask)]
    with torch.no_grad():
        for s in range(seeds):
            z = torch.randn(n, net["z_dim"], generator=torch.Generator().manual_seed(s))
            rows.append(G(real * (1 - mask), mask, hm, z))
    grid = torch.cat([torch.cat(list(r), 2) for r in rows], 1)  # 3 × rows·R × n·R
    img = ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="an aligned cache (.npz) or a shard from data.pack_shard")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="{}",
                    help="training config: JSON, or a .json file such as training/generator_128.json (keys: train.DEFAULTS)")
    ap.add_argument("--steps", type=int, required=True, help="the total step to reach")
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--init-generator", default=None, help="start G from these weights when there is no checkpoint")
    ap.add_argument("--export-to", default=None)
    ap.add_argument("--part-mib", type=int, default=15)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = args.data
    with np.load(cache, allow_pickle=False) as z:
        packed = "jpeg" in z.files
    if packed:
        cache = out / "cache.npz"
        if not cache.exists():
            data.unpack_shard(args.data, cache)
    given = Path(args.config).read_text() if args.config.endswith(".json") else args.config
    cfg = {**json.loads(given), "steps": args.steps, "time_budget_s": args.budget_s, "data_path": str(cache)}
    resume = train.latest_checkpoint(out) is not None
    if args.init_generator and not resume:
        cfg["init_generator"] = args.init_generator
    print(json.dumps({"event": "start", "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "resume": resume, **cfg}), flush=True)
    result = train.fit_local(cfg, out)
    print(json.dumps({"event": "exported", **result}), flush=True)
    grid = out / "samples.png"
    sample_grid(result["weights"], str(cache), grid)
    if args.export_to:
        dest = Path(args.export_to)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(result["card"], dest / "generator.json")
        shutil.copy(grid, dest / "samples.png")
        blob, part = Path(result["weights"]).read_bytes(), args.part_mib << 20
        for i in range(0, len(blob), part):  # fetched files are capped in size: reassemble with `cat`
            (dest / f"generator.pt.part{i // part}").write_bytes(blob[i:i + part])


if __name__ == "__main__":
    main()
