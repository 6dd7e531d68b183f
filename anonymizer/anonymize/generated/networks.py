"""The generator (inference); the discriminator and latent encoder are training code (training/networks.py).

Generator: a U-Net. Its input is 9 channels at the crop resolution: the crop with the face region set to 0
(background context only: it never sees the face's pixels), the binary mask of that region, and the 5
landmark heatmaps. The encoder keeps skip connections from the context; the latent z goes through a small
mapping network to w, and w modulates (per-channel scale and shift, StyleGAN/FiLM style) every decoder
block, so different z give different identities in the same pose and context. The output is composited:
generated pixels inside the mask, the input context outside, in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

COND_CHANNELS = 1 + 5  # mask + heatmaps


def levels(resolution: int, bottom: int = 8) -> int:
    n = int(round(math.log2(resolution / bottom)))
    if n < 1 or bottom * 2**n != resolution:
        raise ValueError(f"resolution must be {bottom}·2^k (k ≥ 1), got {resolution}")
    return n


def _groups(c: int) -> int:
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class EncBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.n1, self.n2 = nn.GroupNorm(_groups(cout), cout), nn.GroupNorm(_groups(cout), cout)

    def forward(self, x):
        x = F.leaky_relu(self.n1(self.conv1(x)), 0.2)
        return F.leaky_relu(self.n2(self.conv2(x)), 0.2)


class _ModConv(nn.Module):
    """conv → group norm → scale and shift from w → leaky ReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm = nn.GroupNorm(_groups(cout), cout, affine=False)
        self.affine = nn.Linear(w_dim, 2 * cout)
        nn.init.normal_(self.affine.weight, std=0.02)  # z matters from the first step; scale starts near 1
        nn.init.zeros_(self.affine.bias)

    def forward(self, x, w):
        gamma, beta = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        return F.leaky_relu(self.norm(self.conv(x)) * (1 + gamma) + beta, 0.2)


class _DecBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, w_dim: int) -> None:
        super().__init__()
        self.c1 = _ModConv(cin + cskip, cout, w_dim)
        self.c2 = _ModConv(cout, cout, w_dim)

    def forward(self, x, skip, w):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = torch.cat([x, skip], 1)
        return self.c2(self.c1(x, w), w)


class Generator(nn.Module):
    def __init__(self, resolution: int = 128, base_channels: int = 32, max_channels: int = 384,
                 z_dim: int = 128, w_dim: int = 256, bottleneck_blocks: int = 2) -> None:
        super().__init__()
        self.config = dict(resolution=resolution, base_channels=base_channels, max_channels=max_channels,
                           z_dim=z_dim, w_dim=w_dim, bottleneck_blocks=bottleneck_blocks)
        self.resolution, self.z_dim = resolution, z_dim
        n = levels(resolution)
        ch = [min(base_channels * 2**i, max_channels) for i in range(n + 1)]
        self.stem = nn.Sequential(nn.Conv2d(3 + COND_CHANNELS, ch[0], 3, 1, 1), nn.LeakyReLU(0.2))
        self.enc = nn.ModuleList([EncBlock(ch[i], ch[i + 1]) for i in range(n)])
        self.mapping = nn.Sequential(nn.Linear(z_dim, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim),
                                     nn.LeakyReLU(0.2))
        self.mid = nn.ModuleList([_ModConv(ch[n], ch[n], w_dim) for _ in range(2 * bottleneck_blocks)])
        self.dec = nn.ModuleList([_DecBlock(ch[i + 1], ch[i], ch[i], w_dim) for i in reversed(range(n))])
        self.to_rgb = nn.Conv2d(ch[0], 3, 1)

    def forward(self, context: torch.Tensor, mask: torch.Tensor, heatmaps: torch.Tensor, z: torch.Tensor):
        """context: B×3×H×W in [-1, 1], already 0 where mask is 1; mask: B×1×H×W in {0, 1}; heatmaps: B×5×H×W;
        z: B×z_dim. Returns the composite (generated inside the mask, context outside)."""
        context = context * (1 - mask)  # the generator never sees the face's pixels, whatever it is given
        x = self.stem(torch.cat([context, mask, heatmaps], 1))
        skips = [x]
        for block in self.enc:
            x = block(x)
            skips.append(x)
        w = self.mapping(z)
        for i in range(0, len(self.mid), 2):
            x = x + self.mid[i + 1](self.mid[i](x, w), w)
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            x = block(x, skip, w)
        rgb = torch.tanh(self.to_rgb(x))
        return rgb * mask + context * (1 - mask)
