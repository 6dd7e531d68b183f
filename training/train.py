"""Training the generator, and the export of its weights.

`fit(config, device, ...)` is the loop, free of Ray; `train_loop_per_worker` runs it on Ray Train workers
(one process to a GPU cluster) and `fit_local` in a plain process (machines without Ray):
- hinge loss for D and G; R1 penalty on real images every `r1_every` steps (lazy: scaled by r1_every);
- DiffAugment (Zhao et al., 2020): the same differentiable translation (image and conditioning together),
  colour and cutout (image only) on real and fake images before D; `d_spectral_norm` switches D's SN (off by
  default: with this D's average pooling it shrinks the output's dependence on the input ~100-fold, see
  networks._variance_preserving_init, and R1 is the regulariser instead, as in StyleGAN2);
- `d_highpass`: D also sees the high-pass residual of the image (networks.Discriminator says why);
- `d_patch`: D gives one logit per 8×8-grid patch, and the losses average over the patches that touch the
  face region (context-only patches are identical in real and fake: no signal, only noise);
- feature matching on D's own features (no pretrained network anywhere);
- `ms_weight`: diversity-sensitive mode seeking (DSGAN, Yang et al. 2019; MSGAN, Mao et al. 2019). Half of
  each G batch repeats the other half's conditioning with a new z, and G gains min(mean |Δimage| in the
  hole / mean |Δz|, `ms_tau`): the same pose and context must give different faces for different z
  (otherwise G learns to ignore z). The cap matters: MSGAN's unbounded 1/ratio drove this G to colour
  blobs within 600 steps (YuNet found 38% of its faces, dlib 5%);
- `vae`: a cVAE branch (BicycleGAN's cVAE-GAN + cLR-GAN, Zhu et al. 2017). Half of each G batch takes its
  z from a latent encoder of the *real* face (training only, never exported), and the reconstruction terms
  below apply to that half alone, with a KL term (`kl_weight`) toward N(0, I) that spares the first
  `kl_free_nats` (free bits, Kingma et al. 2016: without them a G that starts by ignoring z gives E no reason
  to encode anything, and the KL term wins: 0.07 nats after 200 steps); the other half takes z from
  the prior, and G must let the encoder read that z back (`latent_weight`). Reconstruction then rewards
  using z instead of ignoring it, so faces from different z differ without a discriminator that has
  already learned (mode seeking needs one, see above). With D at chance the variety came with artefacts and
  more re-identification (docs/generation.md): a branch to pair with a working D, not to replace it;
- reconstruction terms: `lowfreq_weight` (L1 between 8×8 average-pooled fake and real crops: skin tone and
  lighting) and `l1_weight` (full-resolution L1 inside the hole). The generator never sees the face's
  pixels, so neither can copy an identity: the best it can do is the face *expected* from the context and
  the landmarks, i.e. they pull it toward a mean face in the right pose (easy to detect, low diversity),
  and the adversarial term is what adds variety. Short CPU runs lean on them, since the discriminator
  learns slowly there;
- `init_generator`: start G (and its EMA) from earlier weights (a state.pt or an exported .pt) with a fresh D
  and optimisers: a new discriminator or loss fine-tunes a generator instead of starting over;
  `d_warmup_steps`: the first steps train D alone against that frozen G (a fresh D facing a moving G stayed
  at chance; docs/generation.md);
- `time_budget_s`: stop (with a checkpoint) once the budget is spent, for fixed-length GPU or CPU slots;
- Adam with β = (0, 0.99); an EMA of G's weights (ramped in over the first steps) is what gets exported;
- a checkpoint (G, D, EMA, both optimisers, step, RNG) every `checkpoint_every` steps and at the end; a run
  given a checkpoint resumes from its step.

`train(config, out_dir, ...)` builds the TorchTrainer (1 worker, GPU when torch sees one), runs it and
writes `<out_dir>/generator/<name>.pt` (the EMA generator as an fp16 state dict) and `<name>.json` (the
model card: network config, steps, data hash, split, training config, weight sha256).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anonymizer.anonymize.generated import align as al
from anonymizer.anonymize.generated.networks import Generator
from training.networks import Discriminator, LatentEncoder, count_parameters

DEFAULTS = dict(
    resolution=128, base_channels=32, max_channels=384, z_dim=128, w_dim=256, bottleneck_blocks=2,
    batch_size=32, steps=100_000, lr_g=2e-4, lr_d=2e-4, betas=(0.0, 0.99), r1_gamma=1.0, r1_every=16,
    ema_decay=0.999, d_spectral_norm=False, d_patch=False, d_highpass=False, d_warmup_steps=0,
    fm_weight=1.0, ms_weight=0.0, ms_tau=0.15, vae=False, kl_weight=0.01, kl_free_nats=0.0, latent_weight=0.5,
    init_generator=None,
    l1_weight=0.0, lowfreq_weight=0.0, time_budget_s=None,
    augment=("translation", "color", "cutout"),
    checkpoint_every=2000, log_every=100, seed=0, num_threads=None, amp="auto",
)

STATE_FILE = "state.pt"


def full_config(config: dict) -> dict:
    unknown = set(config) - set(DEFAULTS) - {"data_path", "resume_from"}
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg["vae"] and cfg["ms_weight"] > 0:
        raise ValueError("vae and ms_weight both split the G batch in halves: use one of them")
    return cfg


def network_config(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("resolution", "base_channels", "max_channels", "z_dim", "w_dim", "bottleneck_blocks")}


# ---------------------------------------------------------------- data

def load_tensors(data_path: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops as uint8 N×3×R×R and landmarks (crop coordinates at resolution R) as N×5×2."""
    with np.load(data_path, allow_pickle=False) as z:
        crops, lms, size = z["crops"], z["landmarks"].astype(np.float32), int(z["size"])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    if resolution != size:
        x = F.interpolate(x.float(), size=(resolution, resolution), mode="area").round().clamp(0, 255).to(torch.uint8)
        lms = lms * (resolution / size)
    return x, torch.from_numpy(lms)


def conditioning(resolution: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    hole = torch.from_numpy(al.hole_mask(resolution))[None, None].to(device)
    coords = torch.arange(resolution, dtype=torch.float32, device=device)
    return hole, coords


def batch_heatmaps(lms: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Same Gaussians as align.heatmaps, batched in torch: B×5×R×R."""
    sigma = 0.02 * resolution
    gx = torch.exp(-((coords[None, None, :] - lms[:, :, :1]) ** 2) / (2 * sigma * sigma))
    gy = torch.exp(-((coords[None, None, :] - lms[:, :, 1:]) ** 2) / (2 * sigma * sigma))
    return gy[:, :, :, None] * gx[:, :, None, :]


# ---------------------------------------------------------------- DiffAugment

def diff_augment(img: torch.Tensor, cond: torch.Tensor, policy, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable augmentation; translation moves image and conditioning together, by whole pixels as in
    DiffAugment (a sub-pixel bilinear shift would low-pass the real images, hiding the very texture that
    tells a smooth fake from a real face)."""
    b, dev = img.shape[0], img.device

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device="cpu").to(dev)

    if "color" in policy:
        img = img + (rand(b, 1, 1, 1) - 0.5)  # brightness
        mean = img.mean(1, keepdim=True)
        img = (img - mean) * (rand(b, 1, 1, 1) * 2) + mean  # saturation
        mean = img.mean((1, 2, 3), keepdim=True)
        img = (img - mean) * (rand(b, 1, 1, 1) + 0.5) + mean  # contrast
    if "translation" in policy:
        both = torch.cat([img, cond], 1)
        r = both.shape[-1]
        pixels = ((rand(b, 2) - 0.5) * r / 8).round()  # up to 1/16 of the side each way
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, :, 2] = pixels * 2 / r
        grid = F.affine_grid(theta, list(both.shape), align_corners=False)
        both = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        img, cond = both[:, :3], both[:, 3:]
    if "cutout" in policy:
        r = img.shape[-1]
        half = r // 4
        cy = (rand(b) * r).long()
        cx = (rand(b) * r).long()
        ys = torch.arange(r, device=dev)[None, :, None]
        xs = torch.arange(r, device=dev)[None, None, :]
        hole = ((ys - cy[:, None, None]).abs() < half // 2 + 1) & ((xs - cx[:, None, None]).abs() < half // 2 + 1)
        img = img * (~hole)[:, None].to(img.dtype)
    return img, cond


# ---------------------------------------------------------------- the loop

def _over_face(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample (B) or per-patch (B×h×w) values; patches count where they touch the face region."""
    if values.dim() == 1:
        return values.mean()
    weight = F.adaptive_max_pool2d(mask.float(), values.shape[-2:]).squeeze(1)
    return (values.float() * weight).sum() / weight.sum().clamp_min(1.0)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension, averaged over the batch (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(0)


def _load_generator_weights(path: str, device) -> dict:
    """G's state dict from a training state (its EMA) or from exported fp16 weights."""
    obj = torch.load(path, map_location=device, weights_only=False)
    weights = obj["G_ema"] if isinstance(obj, dict) and "G_ema" in obj else obj
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def _save_state(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def fit(cfg: dict, device: torch.device, state: dict | None = None, report=None, rank: int = 0, world: int = 1,
        wrap=lambda module: module) -> int:
    """The training loop itself, free of Ray: Ray Train's workers call it, and so does `fit_local` on a machine
    without Ray (the GPU machine). `state` resumes a checkpoint; `report(metrics, state_or_None)` receives the
    metrics every `log_every` steps and the full state to keep every `checkpoint_every` steps and at the end.
    Returns the step reached."""
    cfg = full_config(cfg)
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    report = report or (lambda metrics, state: None)
    torch.manual_seed(cfg["seed"] + rank)
    gen = torch.Generator().manual_seed(cfg["seed"] * 7919 + rank)

    res = cfg["resolution"]
    images, landmarks = load_tensors(cfg["data_path"], res)
    if device.type == "cuda":  # the whole set fits on a GPU (8k crops at 128 px: 0.4 GB): no copies per step
        images, landmarks = images.to(device), landmarks.to(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    n = images.shape[0]
    hole, coords = conditioning(res, device)

    G = Generator(**network_config(cfg)).to(device)
    D = Discriminator(res, cfg["base_channels"], cfg["max_channels"], cfg["d_spectral_norm"], cfg["d_patch"],
                      cfg["d_highpass"]).to(device)
    if state is None and cfg["init_generator"]:
        G.load_state_dict(_load_generator_weights(cfg["init_generator"], device))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr_g"], betas=tuple(float(b) for b in cfg["betas"]))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr_d"], betas=tuple(float(b) for b in cfg["betas"]))
    E = opt_e = None
    if cfg["vae"]:
        E = LatentEncoder(res, cfg["base_channels"], cfg["max_channels"], cfg["z_dim"]).to(device)
        opt_e = torch.optim.Adam(E.parameters(), lr=cfg["lr_g"], betas=tuple(float(b) for b in cfg["betas"]))

    step, resumed_from = 0, None
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        if E is not None and state.get("E") is not None:
            E.load_state_dict(state["E"])
            opt_e.load_state_dict(state["opt_e"])
        step = resumed_from = int(state["step"])
        if state.get("gen_state") is not None:
            gen.set_state(state["gen_state"])

    G_train, D_train = wrap(G), wrap(D)
    use_amp = device.type == "cuda" and (cfg["amp"] is True or (cfg["amp"] == "auto" and torch.cuda.is_bf16_supported()))
    aug = tuple(cfg["augment"])
    bs = min(cfg["batch_size"], n)

    def sample_batch():
        idx = torch.randint(0, n, (bs,), generator=gen)
        real = images[idx].to(device).float() / 127.5 - 1
        hm = batch_heatmaps(landmarks[idx].to(device), coords, res)
        mask = hole.expand(bs, -1, -1, -1)
        return real, mask, hm

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    metrics: dict = {}
    warmup_left = int(cfg["d_warmup_steps"]) if state is None else 0
    t0 = time.time()
    budget = cfg["time_budget_s"]
    while step < cfg["steps"]:
        real, mask, hm = sample_batch()
        cond = torch.cat([mask, hm], 1)
        z = torch.randn(bs, cfg["z_dim"], generator=gen).to(device)
        context = real * (1 - mask)

        # --- D: hinge, plus lazy R1 on the (augmented) reals
        with autocast():
            fake = G_train(context, mask, hm, z).detach()
            r_img, r_cond = diff_augment(real, cond, aug, gen)
            f_img, f_cond = diff_augment(fake, cond, aug, gen)
            d_real, _ = D_train(r_img, r_cond[:, :1], r_cond[:, 1:])
            d_fake, _ = D_train(f_img, f_cond[:, :1], f_cond[:, 1:])
            loss_d = (_over_face(F.relu(1 - d_real.float()), r_cond[:, :1])
                      + _over_face(F.relu(1 + d_fake.float()), f_cond[:, :1]))
            d_real_mean = float(_over_face(d_real.detach(), r_cond[:, :1]))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        r1 = torch.zeros((), device=device)
        if cfg["r1_gamma"] > 0 and (step + warmup_left) % cfg["r1_every"] == 0:
            r_img = r_img.detach().requires_grad_(True)
            d_r, _ = D_train(r_img, r_cond[:, :1], r_cond[:, 1:])
            (grad,) = torch.autograd.grad(d_r.sum(), r_img, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            (cfg["r1_gamma"] / 2 * r1 * cfg["r1_every"]).backward()
        opt_d.step()

        if warmup_left > 0:  # D alone; these steps do not count as training steps
            warmup_left -= 1
            if rank == 0 and warmup_left % cfg["log_every"] == 0:
                print(json.dumps({"event": "d_warmup", "left": warmup_left, "loss_d": float(loss_d.detach()),
                                  "d_real": d_real_mean}), flush=True)
            continue

        # --- G: hinge + feature matching (+ mode seeking, + optional reconstruction terms)
        half = bs // 2
        if cfg["ms_weight"] > 0 and half > 0:  # second half: the first half's conditioning, new z
            real, mask, hm, cond, context = (torch.cat([t[:half], t[:half], t[2 * half:]])
                                             for t in (real, mask, hm, cond, context))
            z = torch.randn(bs, cfg["z_dim"], generator=gen).to(device)
        kl = kl_loss = latent = torch.zeros((), device=device)
        recon = slice(0, bs)  # the samples the reconstruction terms apply to
        with autocast():
            if E is not None and half > 0:  # second half: z encoded from the real face
                mu, logvar = E(real[half:], mask[half:])
                z = torch.cat([z[:half], mu + torch.randn_like(mu) * (0.5 * logvar).exp()])
                per_dim = kl_per_dim(mu.float(), logvar.float())
                kl, kl_loss = per_dim.sum(), per_dim.clamp_min(cfg["kl_free_nats"] / cfg["z_dim"]).sum()
                recon = slice(half, bs)
            fake = G_train(context, mask, hm, z)
            if E is not None and half > 0 and cfg["latent_weight"] > 0:
                # G must make a prior z readable back; this trains G alone (BicycleGAN), so E runs detached
                frozen = {k: v.detach() for k, v in E.named_parameters()}
                read_back = torch.func.functional_call(E, frozen, (fake[:half], mask[:half]))[0]
                latent = F.l1_loss(read_back.float(), z[:half])
            f_img, f_cond = diff_augment(fake, cond, aug, gen)
            d_fake, f_feats = D_train(f_img, f_cond[:, :1], f_cond[:, 1:])
            loss_g = -_over_face(d_fake, f_cond[:, :1])
            ms = torch.zeros((), device=device)
            if cfg["ms_weight"] > 0 and half > 0:
                hole_px = 3 * mask[:half].flatten(1).sum(1)
                d_img = ((fake[:half] - fake[half:2 * half]).abs() * mask[:half]).flatten(1).sum(1) / hole_px
                d_z = (z[:half] - z[half:2 * half]).abs().mean(1)
                ms = (d_img.float() / d_z).clamp(max=cfg["ms_tau"]).mean()
            fm = torch.zeros((), device=device)
            if cfg["fm_weight"] > 0:
                with torch.no_grad():
                    r_img, r_cond = diff_augment(real, cond, aug, gen)
                    _, r_feats = D_train(r_img, r_cond[:, :1], r_cond[:, 1:])
                fm = sum(F.l1_loss(a.float().mean(0), b.float().mean(0)) for a, b in zip(f_feats, r_feats))
            l1 = (F.l1_loss(fake[recon] * mask[recon], real[recon] * mask[recon]) if cfg["l1_weight"] > 0
                  else torch.zeros((), device=device))
            lowfreq = (F.l1_loss(F.avg_pool2d(fake[recon].float(), res // 8), F.avg_pool2d(real[recon], res // 8))
                       if cfg["lowfreq_weight"] > 0 else torch.zeros((), device=device))
            total_g = (loss_g + cfg["fm_weight"] * fm + cfg["l1_weight"] * l1 + cfg["lowfreq_weight"] * lowfreq
                       - cfg["ms_weight"] * ms + cfg["kl_weight"] * kl_loss + cfg["latent_weight"] * latent)
        opt_g.zero_grad(set_to_none=True)
        if E is not None:
            opt_e.zero_grad(set_to_none=True)
        total_g.backward()
        opt_g.step()
        if E is not None:
            if world > 1:  # E is not DDP-wrapped (it runs twice per step): average its gradients by hand
                for p in E.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            opt_e.step()

        with torch.no_grad():  # EMA of G's weights (buffers copied); ramped so early steps are not all init
            beta = min(cfg["ema_decay"], (1 + step) / (10 + step))
            for pe, p in zip(G_ema.parameters(), G.parameters()):
                pe.lerp_(p.detach(), 1 - beta)
            for be, b in zip(G_ema.buffers(), G.buffers()):
                be.copy_(b)
        step += 1

        out_of_time = budget is not None and time.time() - t0 >= budget
        metrics = {"step": step, **{k: float(v.detach()) for k, v in
                                    dict(loss_d=loss_d, loss_g=loss_g, fm=fm, l1=l1, lowfreq=lowfreq, ms=ms, kl=kl,
                                         latent=latent).items()},
                   "r1": float(r1.detach()), "d_real": d_real_mean,
                   "d_fake": float(_over_face(d_fake.detach(), f_cond[:, :1].detach())),
                   "seconds": round(time.time() - t0, 2), "resumed_from": resumed_from}
        if step % cfg["checkpoint_every"] == 0 or step == cfg["steps"] or out_of_time:
            report(metrics, dict(G=G.state_dict(), D=D.state_dict(), G_ema=G_ema.state_dict(), opt_g=opt_g.state_dict(),
                                 opt_d=opt_d.state_dict(), step=step, gen_state=gen.get_state(), config=cfg,
                                 network=network_config(cfg),
                                 E=E.state_dict() if E is not None else None,
                                 opt_e=opt_e.state_dict() if E is not None else None) if rank == 0 else None)
        elif step % cfg["log_every"] == 0:
            report(metrics, None)
        if rank == 0 and (step % cfg["log_every"] == 0 or out_of_time):
            print(json.dumps({"event": "train_step", **metrics}), flush=True)
        if out_of_time:
            break
    if not metrics and rank == 0:  # resumed at or past the target: hand the state back so the run has a result
        report({"step": step, "resumed_from": resumed_from}, state)
    return step


def train_loop_per_worker(config: dict) -> None:
    """What every Ray Train worker runs: `fit` with Ray's device, checkpoints and DDP wrapping."""
    import ray.train
    import ray.train.torch as rtt

    ctx = ray.train.get_context()
    device = rtt.get_device()
    # A restarted attempt of this run resumes from its own latest checkpoint; a new run from `resume_from`
    # (Ray Train v2 dropped the trainer's resume_from_checkpoint: the loop loads it itself).
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint.from_directory(config["resume_from"])
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)

    def report(metrics: dict, to_keep: dict | None) -> None:
        if to_keep is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            _save_state(Path(tmp) / STATE_FILE, **to_keep)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    world = ctx.get_world_size()
    wrap = (lambda m: rtt.prepare_model(m, parallel_strategy_kwargs={"find_unused_parameters": False})) if world > 1 \
        else (lambda m: m)
    fit(config, device, state, report, ctx.get_world_rank(), world, wrap)


def fit_local(config: dict, out_dir: str | os.PathLike, name: str = "generator", data_summary: dict | None = None) -> dict:
    """`fit` in this process (no Ray): checkpoints to `<out_dir>/checkpoint/state.pt`, resumed from there when
    present, then the export. For machines without Ray, such as the GPU machine."""
    cfg = full_config(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep = Path(out_dir) / "checkpoint" / STATE_FILE
    keep.parent.mkdir(parents=True, exist_ok=True)
    state = torch.load(keep, map_location=device, weights_only=False) if keep.exists() else None
    last: dict = {}

    def report(metrics: dict, to_keep: dict | None) -> None:
        last.update(metrics)
        if to_keep is not None:
            _save_state(keep, **to_keep)

    fit(cfg, device, state, report)
    return export(keep, out_dir, name, data_summary=data_summary, metrics=last)


# ---------------------------------------------------------------- driver side

def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    p = Path(out_dir) / "checkpoint"
    return p if (p / STATE_FILE).exists() else None


def train(config: dict, out_dir: str | os.PathLike, name: str = "generator", resume_from: str | os.PathLike | None = None,
          num_workers: int = 1, use_gpu: bool | None = None, data_summary: dict | None = None) -> dict:
    """Run the TorchTrainer, keep its last checkpoint in `<out_dir>/checkpoint`, export the EMA generator.

    `config` needs `data_path` (an aligned cache from data.build_cache) and `steps` (the total to reach).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = full_config(config)
    if "data_path" not in cfg:
        raise ValueError("training config needs data_path (see training.data.build_cache)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    if resume_from:
        cfg["resume_from"] = str(Path(resume_from).resolve())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                       storage_path=str(out / "ray"),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training produced no checkpoint")
    keep = out / "checkpoint"
    staging = out / "checkpoint.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, staging)
    shutil.rmtree(keep, ignore_errors=True)
    os.replace(staging, keep)
    return export(keep / STATE_FILE, out, name, data_summary=data_summary, metrics=result.metrics)


def export(state_path: str | os.PathLike, out_dir: str | os.PathLike, name: str = "generator",
           data_summary: dict | None = None, metrics: dict | None = None) -> dict:
    """The EMA generator as an fp16 state dict + its model card, under `<out_dir>/generator/`."""
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    cfg = state["config"]
    with np.load(cfg["data_path"], allow_pickle=False) as z:
        data_hash, n_images = str(z["data_hash"]), int(z["crops"].shape[0])
        n_ids = len(set(z["identities"].tolist()))
    gdir = Path(out_dir) / "generator"
    gdir.mkdir(parents=True, exist_ok=True)
    weights = gdir / f"{name}.pt"
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state["G_ema"].items()}
    tmp = weights.with_suffix(".tmp")
    torch.save(half, tmp)
    os.replace(tmp, weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = {
        "name": name, "kind": "anonymizer.anonymize.generated.networks.Generator (EMA weights, fp16)",
        "network": state["network"], "steps": int(state["step"]),
        "parameters": count_parameters(Generator(**state["network"])),
        "weights_file": weights.name, "weights_sha256": sha, "weights_bytes": weights.stat().st_size,
        "data": {"source": "LFW (research data set; split by identity)", "data_hash": data_hash,
                 "images": n_images, "identities": n_ids, **(data_summary or {})},
        "crop": {"size": int(state["network"]["resolution"]), "template": al.TEMPLATE.tolist(),
                 "mask_center": list(al.MASK_CENTER), "mask_axes": list(al.MASK_AXES)},
        "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
                     if k not in ("data_path", "resume_from")},
        "final_metrics": metrics or {}, "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pretrained_networks": "none",
    }
    card_path = gdir / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=2, default=str))
    return {"weights": str(weights), "card": str(card_path), "checkpoint": str(Path(state_path).parent),
            "steps": card["steps"], "data_hash": data_hash, "sha256": sha}
