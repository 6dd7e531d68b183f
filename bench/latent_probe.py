"""Does the generator use its latent? On held-out LFW crops, from a training checkpoint (`state.pt`) or
exported weights (a .pt with its .json card beside it):
L1 inside the hole with z encoded from the real face (cVAE runs only), with z = 0 and with z from the prior,
and the mean |difference| between the faces of two prior draws. A generator that ignores z gives the same
L1 for all three and a difference near 0; one that uses it reconstructs better from the encoded z and
differs between draws. Prints a line, writes JSON. Run from the repository root:

    python bench/latent_probe.py CHECKPOINT/state.pt|WEIGHTS.pt [--n 64] [--out bench/results/latent_probe.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def probe(state_path: str, n: int = 64, seed: int = 1) -> dict:
    from training import train
    from anonymizer.anonymize.generated.operator import load_generator
    from training.data import build_cache
    from anonymizer.anonymize.generated.networks import Generator
    from training.networks import LatentEncoder

    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if "G_ema" in state:  # a training checkpoint
        G = Generator(**state["network"]).eval()
        G.load_state_dict(state["G_ema"])
        step = int(state["step"])
    else:  # exported weights, checked against their card
        G, card = load_generator(Path(state_path))
        state, step = {}, int(card["steps"])
    res = G.resolution
    images, landmarks = train.load_tensors(str(build_cache(split="eval")), res)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(images.shape[0], generator=g)[:n]
    real = images[idx].float() / 127.5 - 1
    hole, coords = train.conditioning(res, "cpu")
    hm, mask = train.batch_heatmaps(landmarks[idx], coords, res), hole.expand(len(idx), -1, -1, -1)
    context = real * (1 - mask)

    def hole_l1(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float(((a - b).abs() * mask).sum() / (3 * mask.sum())), 4)

    with torch.no_grad():
        za, zb = (torch.randn(len(idx), G.z_dim, generator=g) for _ in range(2))
        fa, fb = G(context, mask, hm, za), G(context, mask, hm, zb)
        out = {"checkpoint": str(state_path), "step": step, "faces": len(idx),
               "l1_zero_z": hole_l1(G(context, mask, hm, torch.zeros_like(za)), real),
               "l1_prior_z": hole_l1(fa, real), "prior_draws_differ_by": hole_l1(fa, fb), "l1_encoded_z": None}
        if state.get("E") is not None:
            cfg = state["config"]
            E = LatentEncoder(res, cfg["base_channels"], cfg["max_channels"], G.z_dim).eval()
            E.load_state_dict(state["E"])
            mu, logvar = E(real, mask)
            out["l1_encoded_z"] = hole_l1(G(context, mask, hm, mu), real)
            out["kl_nats"] = round(float(train.kl_per_dim(mu, logvar).sum()), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("state", help="a training checkpoint's state.pt, or exported weights")
    ap.add_argument("--n", type=int, default=64, help="held-out faces")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latent_probe.json"))
    args = ap.parse_args()
    result = probe(args.state, args.n)
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
