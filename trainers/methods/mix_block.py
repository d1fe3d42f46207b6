"""AutoMix's mix block M_phi (see automix.py), an `nn.Module`: apart, so that the method registry loads
without torch (trainers._lazy)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MixBlock(nn.Module):
    """M_phi of eq. 5-6: lambda-embedded cross-attention -> sigmoid -> upsampled pixel mask."""

    def __init__(self, in_channels: int, reduction: int = 2):
        super().__init__()
        inner = max(1, in_channels // reduction)
        self.query = nn.Conv2d(in_channels + 1, inner, 1)  # W_P, shared by both sides
        self.value = nn.Conv2d(in_channels + 1, 1, 1)  # W_Z
        self.scale = 1.0 / math.sqrt(inner)
        for conv in (self.query, self.value):  # the public code's init: N(0, 0.01), zero bias
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(
        self, z: torch.Tensor, lam: float, perm: torch.Tensor, out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Mask s (B, 1, *out_size) in [0, 1]: the share of x_i (= x) in x_mix, x_j = x[perm]."""
        n, _, h, w = z.shape
        z_i = torch.cat([z, z.new_full((n, 1, h, w), lam)], dim=1)
        z_j = torch.cat([z[perm], z.new_full((n, 1, h, w), 1.0 - lam)], dim=1)
        q = self.query(z_i).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.query(z_j).flatten(2)  # (B, C', HW)
        attn = torch.softmax((q @ k).float() * self.scale, dim=-1)  # (B, HW, HW), row-normalised
        v = self.value(z_i).flatten(2).transpose(1, 2).float()  # (B, HW, 1)
        s = torch.sigmoid(attn @ v).transpose(1, 2).reshape(n, 1, h, w).to(z.dtype)
        return F.interpolate(s, size=out_size, mode="nearest")
