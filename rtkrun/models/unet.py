"""``dddm_unet``: a DDPM++-style U-Net (Song et al. 2021, as configured for CIFAR-10 in Karras et
al. 2022, docs/science.md, CIFAR-10) that reads the DDDM estimate z by channel concatenation.

The DDDM paper's network reads z through cross-attention in an ADM U-Net; concatenating z to
x_t on the channel axis (6 input channels for RGB) is the simpler equivalent we use. The
reference size (128 channels, multipliers (2, 2, 2), 4 residual blocks per level, attention at
16×16, dropout 0.13) has 55.7 M parameters without the extra input channels.

Block structure (ours, from the published description): pre-activation residual blocks
GroupNorm → SiLU → 3×3 conv, the noise embedding added between the two convolutions, skip
connections scaled by 1/√2; down- and up-sampling inside residual blocks (2×2 average pooling,
nearest-neighbour upsampling); one self-attention layer after each encoder block at the
attention resolutions and after the last block of each such decoder level; the decoder
concatenates every encoder activation (15 skips at the reference size).

``z=None`` is the null estimate: zeros in the z channels and a learned "no estimate" offset
of the noise embedding, so an absent estimate is distinguishable from a grey image. The
``estimate_mask`` keyword gives the same per sample in one batched call, which the DDDM
objective uses so that training runs one network call per step (and compiles to fixed shapes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rtkrun.diffusion.schedules import VPSchedule
from rtkrun.errors import ConfigError
from rtkrun.models import precond
from rtkrun.schemas.models import UNetConfig

SKIP_SCALE = 1.0 / math.sqrt(2.0)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block with the noise embedding added after the first conv;
    ``resample`` = "down" | "up" | None changes the resolution inside the block."""

    def __init__(
        self, c_in: int, c_out: int, emb: int, dropout: float, groups: int, resample: str | None, attention: bool
    ) -> None:
        super().__init__()
        self.resample = resample
        self.norm0 = _norm(c_in, groups)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm1 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if (c_in != c_out or resample) else None
        self.attention = SelfAttention(c_out, groups) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        skip = self._resample(x)
        x = (h + (self.skip(skip) if self.skip is not None else skip)) * SKIP_SCALE
        if self.attention is not None:
            x = self.attention(x)
        return x


class SelfAttention(nn.Module):
    """One-head self-attention over the H·W positions (scaled dot product), residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        if x.dtype == torch.float64:
            # The diagnostics' float64 path takes jvps, and forward-mode AD is not implemented
            # for the fused attention kernels (torch 2.14, CPU); the plain formula is the same map.
            out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c), dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * SKIP_SCALE


class DDDMUNet(nn.Module):
    accepts_estimate_mask = True  # the DDDM objective may batch null and real estimates in one call

    def __init__(self, cfg: UNetConfig, shape: tuple[int, int, int], schedule: VPSchedule, data_std: float) -> None:
        super().__init__()
        c_img, resolution, _ = shape
        self.cfg, self.schedule, self.data_std = cfg, schedule, float(data_std)
        ch, emb, g = cfg.channels, 4 * cfg.channels, cfg.groups
        self.noise_features = precond.NoiseLevelFeatures(ch, max_frequency=64.0)
        self.embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.no_estimate = nn.Parameter(torch.zeros(emb))
        c_input = 2 * c_img if cfg.estimate_input else c_img
        self.conv_in = nn.Conv2d(c_input, ch, 3, padding=1)

        def block(c_in: int, c_out: int, res: int, resample: str | None = None, attend: bool = True) -> ResBlock:
            attention = attend and res in cfg.attention_resolutions and resample is None
            return ResBlock(c_in, c_out, emb, cfg.dropout, g, resample, attention)

        self.encoder = nn.ModuleList()
        skips, c, res = [ch], ch, resolution
        for level, mult in enumerate(cfg.channel_mult):
            if level > 0:
                self.encoder.append(block(c, c, res // 2, "down"))
                res //= 2
                skips.append(c)
            for _ in range(cfg.blocks_per_level):
                self.encoder.append(block(c, ch * mult, res))
                c = ch * mult
                skips.append(c)
        self.middle = nn.ModuleList([ResBlock(c, c, emb, cfg.dropout, g, None, True), block(c, c, res)])
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.blocks_per_level + 1):
                self.decoder.append(block(c + skips.pop(), ch * mult, res, attend=i == cfg.blocks_per_level))
                c = ch * mult
            if level > 0:
                self.decoder.append(block(c, c, res * 2, "up"))
                res *= 2
        self.norm_out = _norm(c, g)
        self.conv_out = nn.Conv2d(c, c_img, 3, padding=1)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        z: torch.Tensor | None = None,
        estimate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = x_t.shape[0]
        t = t.to(x_t.dtype).expand(b) if t.ndim == 0 else t.to(x_t.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        emb = self.embed(self.noise_features(precond.noise_level(self.schedule, t)))
        h = x_t * precond.input_scale(alpha, sigma, self.data_std)[:, None, None, None]
        if self.cfg.estimate_input:  # rows without an estimate: zero input and the learned offset
            z_in, flag = precond.estimate_and_flag(x_t, z, estimate_mask)
            emb = emb + (1 - flag)[:, None].to(emb.dtype) * self.no_estimate
            h = torch.cat([h, z_in / self.data_std], dim=1)
        if self.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(h)
        skips = [h]
        for layer in self.encoder:
            h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.decoder:
            if layer.resample == "up":
                h = layer(h, emb)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h))).to(x_t.dtype)
        return precond.apply_head(self.cfg.head, x_t, out, alpha, sigma, self.data_std)


def build(cfg: UNetConfig, dataset, schedule: VPSchedule) -> DDDMUNet:
    shape = tuple(dataset.sample_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"dddm_unet needs square images (C, H, W), got sample shape {shape}")
    if shape[1] % 2 ** (len(cfg.channel_mult) - 1):
        raise ConfigError(f"resolution {shape[1]} is not divisible by 2^{len(cfg.channel_mult) - 1} (channel_mult)")
    return DDDMUNet(cfg, shape, schedule, dataset.data_std)
