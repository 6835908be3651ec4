"""LlamaGen-style convolutional encoder and decoder of the ProVQ tokenizer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_provq import ProVQConfig


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(num_groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all spatial positions."""

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head over the flattened positions
        q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding so a stride-2 3x3 conv halves even sizes exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid_block(channels: int, config: ProVQConfig) -> nn.Sequential:
    groups, dropout = config.norm_num_groups, config.dropout
    layers = [ResnetBlock(channels, channels, groups, dropout)]
    if config.mid_attention:
        layers.append(AttentionBlock(channels, groups))
    layers.append(ResnetBlock(channels, channels, groups, dropout))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Images `[B, C, H, W]` -> features `[B, z_channels, H/f, W/f]` with `f = 2 ** (len(ch_mult) - 1)`."""

    def __init__(self, config: ProVQConfig):
        super().__init__()
        widths = [config.base_channels * m for m in config.ch_mult]
        self.conv_in = nn.Conv2d(config.num_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(channels, width, config.norm_num_groups, config.dropout))
                channels = width
            if level < len(widths) - 1:
                blocks.append(Downsample(channels))
        self.down = nn.Sequential(*blocks)
        self.mid = _mid_block(channels, config)
        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features `[B, z_channels, h, w]` -> images `[B, C, h*f, w*f]`, mirroring the encoder."""

    def __init__(self, config: ProVQConfig):
        super().__init__()
        widths = [config.base_channels * m for m in config.ch_mult]
        channels = widths[-1]
        self.conv_in = nn.Conv2d(config.z_channels, channels, 3, padding=1)
        self.mid = _mid_block(channels, config)
        blocks: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, widths[level], config.norm_num_groups, config.dropout))
                channels = widths[level]
            if level > 0:
                blocks.append(Upsample(channels))
        self.up = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, config.num_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
