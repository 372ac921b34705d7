"""A small U-Net for per-pixel transient probability over a (difference, science, reference) stack.

Fully convolutional, so it runs on any tile whose sides are a multiple of ``2**depth``; the
engine pads tiles to satisfy that. BatchNorm is folded into the forward pass as a per-channel
affine in ``eval()`` mode, so a pixel's output depends only on its receptive field (see
:func:`receptive_field_radius`): that is what makes overlapping tiles stitch without seams.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn

ARCHITECTURE_NAME = "astrid-unet"


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net: ``depth`` 2× downsamplings, channels ``base·2**level``, one logit per pixel.

    ``forward`` returns *logits* (N, 1, H, W); apply ``torch.sigmoid`` for probabilities.
    H and W must be multiples of ``2**depth``.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or in_channels < 1:
            raise ValueError("in_channels, base_channels and depth must be positive")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.depth = depth
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(_DoubleConv(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _DoubleConv(chans[-2], chans[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2))
            self.dec.append(_DoubleConv(2 * chans[i - 1], chans[i - 1]))
        self.head = nn.Conv2d(chans[0], 1, 1)

    @property
    def multiple(self) -> int:
        """Tile sides must be multiples of this."""
        return 2**self.depth

    def config(self) -> dict[str, Any]:
        """The architecture dict stored in the model card (enough to rebuild the module)."""
        return {
            "name": ARCHITECTURE_NAME,
            "in_channels": self.in_channels,
            "base_channels": self.base_channels,
            "depth": self.depth,
            "inputs": ["difference", "science", "reference", "residual", "matched"][: self.in_channels],
            "output": "logit (sigmoid -> per-pixel transient probability)",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)


def build_model(architecture: dict[str, Any]) -> UNet:
    """Build the module described by a model card's ``architecture`` dict.

    Raises ``ValueError`` for an unknown architecture name or bad parameters (callers turn it into
    a ``ModelError`` naming the card).
    """
    name = architecture.get("name")
    if name != ARCHITECTURE_NAME:
        raise ValueError(f"unknown architecture {name!r} (this code builds {ARCHITECTURE_NAME!r})")
    return UNet(
        in_channels=int(architecture.get("in_channels", 3)),
        base_channels=int(architecture["base_channels"]),
        depth=int(architecture["depth"]),
    )


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every Conv2d → BatchNorm2d pair folded into one convolution.

    In ``eval()`` BatchNorm is a fixed per-channel affine, so it can be folded into the
    preceding convolution's weights and bias: the same function, one pass over memory less per
    layer (about 15 % of CPU inference time). The caller's module (e.g. one being trained) is
    left untouched; modules without such pairs come back as an eval-mode copy.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return fused


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def receptive_field_radius(depth: int) -> int:
    """Upper bound (pixels) on how far an input pixel can influence an output pixel.

    Each 3×3 conv at level ``l`` (resolution ``2**-l``) adds ``2**l`` pixels; each level has two
    convs on the way down and two on the way up, the bottleneck two; pooling/upsampling add at
    most ``2**l`` more per level.
    """
    r = 0
    for level in range(depth):
        r += 2 * 2**level * 2 + 2**level  # down + up convs, pool/upsample alignment
    r += 2 * 2**depth  # bottleneck
    return r
