"""Training-only networks: the conditional discriminator and the latent encoder.

Discriminator: conditional (it sees the image with the same mask and heatmaps), residual blocks (spectral
norm optional, off by default), He-initialised so that its output depends on its input from the first step,
returning its logit and its intermediate features (for the feature-matching loss). With
`patch=True` it stops at an 8×8 grid and returns one logit per patch (PatchGAN, Isola et al. 2017): most of
a crop is context that real and fake share, and a global pooled head has to find the small face region
inside it, which it did not learn to do in CPU budgets; a patch head judges local texture where it is.
With `highpass=True` it also sees the image's high-pass residual (image minus its 3×3 mean, ×4): a smooth
"mean face" and a real one have the same local means, so from raw pixels D must first grow its own edge
filters before it can tell them apart (no separation after 120 steps at lr 1e-3 on a 5×5-blurred real
face), while from the residual it separates them within 40 steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from anonymizer.anonymize.generated.networks import COND_CHANNELS, EncBlock, levels

_RES_SCALE = 1 / math.sqrt(2)  # two summed unit-variance paths stay unit-variance


def _variance_preserving_init(module: nn.Module) -> None:
    """He init for leaky-ReLU layers, zero biases. PyTorch's default init shrinks the variance ~3x per layer:
    through D's 11 layers the output hardly depended on the input (std 0.002 across images, real − fake
    0.0002 on clearly broken fakes), so D could only move its bias and sat at chance (loss 2.0) through
    4,400 GPU steps. With this init the spread starts at 0.2-0.3 on face crops."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):  # under spectral norm the parameter is weight_orig
            nn.init.kaiming_normal_(getattr(m, "weight_orig", m.weight), a=0.2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, sn: bool = True) -> None:
        super().__init__()
        self.c1 = _sn(nn.Conv2d(cin, cout, 3, 1, 1), sn)
        self.c2 = _sn(nn.Conv2d(cout, cout, 3, 1, 1), sn)
        self.skip = _sn(nn.Conv2d(cin, cout, 1), sn)

    def forward(self, x):
        h = self.c2(F.leaky_relu(self.c1(F.leaky_relu(x, 0.2)), 0.2))
        return F.avg_pool2d((h + self.skip(x)) * _RES_SCALE, 2)


class Discriminator(nn.Module):
    def __init__(self, resolution: int = 128, base_channels: int = 32, max_channels: int = 384,
                 spectral: bool = False, patch: bool = False, highpass: bool = False) -> None:
        super().__init__()
        self.config = dict(resolution=resolution, base_channels=base_channels, max_channels=max_channels,
                           spectral=spectral, patch=patch, highpass=highpass)
        self.patch, self.highpass = patch, highpass
        n = levels(resolution, bottom=8 if patch else 4)
        ch = [min(base_channels * 2**i, max_channels) for i in range(n + 1)]
        self.stem = _sn(nn.Conv2d(3 * (1 + highpass) + COND_CHANNELS, ch[0], 3, 1, 1), spectral)
        self.blocks = nn.ModuleList([_DBlock(ch[i], ch[i + 1], spectral) for i in range(n)])
        self.head = _sn(nn.Conv2d(ch[n], 1, 1) if patch else nn.Linear(ch[n] * 16, 1), spectral)
        _variance_preserving_init(self)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, heatmaps: torch.Tensor):
        """(logits, features): logits are B (global head) or B×8×8 (patch head)."""
        if self.highpass:
            image = torch.cat([image, 4 * (image - F.avg_pool2d(image, 3, 1, 1, count_include_pad=False))], 1)
        x = self.stem(torch.cat([image, mask, heatmaps], 1))
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        x = F.leaky_relu(x, 0.2)
        logit = self.head(x).squeeze(1) if self.patch else self.head(x.flatten(1)).squeeze(1)
        return logit, feats


class LatentEncoder(nn.Module):
    """Training only (cVAE-GAN, BicycleGAN: Zhu et al. 2017): maps the real face region to the mean and log-variance
    of a z that lets G reconstruct it. G then has to use z, so z drawn from the prior gives different faces. It
    is never exported: at inference z is random, and nothing of a real face enters G."""

    def __init__(self, resolution: int, base_channels: int, max_channels: int, z_dim: int) -> None:
        super().__init__()
        n = levels(resolution, bottom=4)
        ch = [min(base_channels * 2**i, max_channels) for i in range(n + 1)]
        self.stem = nn.Sequential(nn.Conv2d(3 + 1, ch[0], 3, 1, 1), nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(*[EncBlock(ch[i], ch[i + 1]) for i in range(n)])
        self.head = nn.Linear(ch[n] * 16, 2 * z_dim)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of z from the face region alone (the context is G's own input)."""
        x = self.blocks(self.stem(torch.cat([image * mask, mask], 1)))
        mu, logvar = self.head(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
