"""The two model families of the book, built from one config.

Introduced in chapter 1 (a small CNN whose filters we look at) and chapter 3
(MLP vs CNN); chapter 6 searches over :class:`ModelConfig`'s fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

KINDS = ("mlp", "cnn")
POOLS = ("max", "avg")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class ConfigError(ValueError):
    """An unknown option or an impossible value in a config."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that determines a model's architecture.

    Defined in chapter 1. A CNN is ``depth`` blocks; block ``i`` has
    ``convs_per_block`` convolutions with ``width * growth**i`` filters of size
    ``kernel_size`` (same padding), optional batch norm, the activation, then
    2x2 pooling; a global average pool and one linear layer classify. With
    ``early_pool`` the pooling comes right after a block's first convolution
    (airbench's layout): the block's other convolutions run at half the
    resolution, for a quarter of their compute (chapter 6 searches over it).
    An MLP flattens the image and applies ``hidden`` fully connected layers.
    """

    kind: str = "cnn"            # "cnn" or "mlp"
    depth: int = 3               # number of conv blocks (each halves the resolution)
    width: int = 32              # filters in the first block
    growth: float = 2.0          # width multiplier from one block to the next
    kernel_size: int = 3         # odd; same padding keeps the resolution inside a block
    convs_per_block: int = 1     # conv layers before each pooling
    batch_norm: bool = True      # BatchNorm2d after every conv
    dropout: float = 0.0         # dropout before the classifier (and between MLP layers)
    pool: str = "max"            # "max" or "avg" 2x2 pooling
    activation: str = "relu"     # "relu" or "gelu"
    early_pool: bool = False     # pool after a block's first conv instead of after its last
    hidden: tuple = (512, 256)   # MLP hidden layer sizes
    n_classes: int = 10
    # --- the fast recipe's options (chapter 5, "What each technique buys"); each off by
    # default, so every run cached before them keeps its key (lib.train.KEY_NEUTRAL_DEFAULTS)
    block_widths: tuple = ()     # filters per block, e.g. (64, 256, 256); () = width*growth**i
    whiten: bool = False         # a frozen 2x2 patch-whitening conv and the activation first
    dirac_init: bool = False     # convs start as identity maps on their first channels
    bn_frozen_scale: bool = False  # batch-norm scales fixed at 1 (only the biases train)
    bn_momentum: float = 0.1     # running-statistics momentum (PyTorch's convention)
    global_pool: str = "avg"     # "avg" or "max" over the last feature map
    head_scale: float = 1.0      # multiplies the logits (airbench: 1/9)

    def __post_init__(self):
        check_model_config(self)

    def widths(self) -> list[int]:
        """Filters per block, e.g. [32, 64, 128] (``block_widths`` when given)."""
        if self.block_widths:
            return [int(w) for w in self.block_widths]
        return [int(round(self.width * self.growth**i)) for i in range(self.depth)]

    def in_channels(self) -> int:
        """Channels the first conv block sees: 3, or the whitening layer's outputs."""
        from .fast import whiten_channels

        return whiten_channels(3) if self.whiten else 3


def check_model_config(c: ModelConfig) -> None:
    """Raise ConfigError with the allowed values if ``c`` is impossible."""
    def bad(name, value, allowed):
        raise ConfigError(f"model option {name}={value!r} is invalid; allowed: {allowed}")

    from .train import check_types

    check_types(c)
    if c.kind not in KINDS:
        bad("kind", c.kind, KINDS)
    if c.pool not in POOLS:
        bad("pool", c.pool, POOLS)
    if c.activation not in ACTIVATIONS:
        bad("activation", c.activation, tuple(ACTIVATIONS))
    if not 1 <= c.depth <= 5:
        bad("depth", c.depth, "1..5 (each block halves 32x32)")
    if c.width < 1:
        bad("width", c.width, ">= 1")
    if not 0.5 <= c.growth <= 4:
        bad("growth", c.growth, "0.5..4")
    if c.kernel_size < 1 or c.kernel_size % 2 == 0 or c.kernel_size > 11:
        bad("kernel_size", c.kernel_size, "odd, 1..11")
    if c.convs_per_block < 1:
        bad("convs_per_block", c.convs_per_block, ">= 1")
    if not 0 <= c.dropout < 1:
        bad("dropout", c.dropout, "0 <= dropout < 1")
    for name in ("hidden", "block_widths"):  # whole numbers only: [1.5] is not [1]
        if not all(_whole(v) for v in getattr(c, name)):
            bad(name, getattr(c, name), "a list of positive integers")
    if any(int(h) < 1 for h in c.hidden):
        bad("hidden", c.hidden, "positive layer sizes")
    if c.block_widths and (len(c.block_widths) != c.depth
                           or any(int(w) < 1 for w in c.block_widths)):
        bad("block_widths", c.block_widths, f"() or {c.depth} positive widths (one per block)")
    if c.global_pool not in POOLS:
        bad("global_pool", c.global_pool, POOLS)
    if not 0 < c.bn_momentum <= 1:
        bad("bn_momentum", c.bn_momentum, "0 < bn_momentum <= 1")
    if not (c.head_scale > 0 and math.isfinite(c.head_scale)):
        bad("head_scale", c.head_scale, "> 0")
    if c.kind == "mlp" and (c.whiten or c.dirac_init):
        bad("whiten" if c.whiten else "dirac_init", True, "False for an MLP (conv options)")
    if c.n_classes < 2:
        bad("n_classes", c.n_classes, ">= 2 (CIFAR-10: 10)")
    if (c.bn_frozen_scale or c.bn_momentum != 0.1) and not c.batch_norm:
        bad("bn_frozen_scale" if c.bn_frozen_scale else "bn_momentum",
            c.bn_frozen_scale or c.bn_momentum, "its default unless batch_norm=True")
    # each pooling halves the resolution (the whitening conv takes one pixel off first)
    n = 31 if c.whiten else 32
    if c.kind == "cnn" and n // 2**c.depth < 1:
        bad("depth", c.depth, f"at most {int(np.log2(n))} blocks for a {n}x{n} input")


def model_config(**overrides) -> ModelConfig:
    """Build a ModelConfig; unknown field names raise ConfigError listing the known ones."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(
            f"unknown model option(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    for name in ("hidden", "block_widths"):  # a list of whole numbers -> a tuple of ints;
        v = overrides.get(name)  # anything else is left for the checks to name
        if isinstance(v, (list, tuple)) and all(_whole(h) for h in v):
            overrides[name] = tuple(int(h) for h in v)
    return ModelConfig(**overrides)


def _whole(v) -> bool:
    """An integer (numpy's too), not a bool and not a float."""
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class CNN(nn.Module):
    """The configurable CNN (chapter 1, chapter 3, chapter 6)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        act = ACTIVATIONS[c.activation]
        pool = nn.MaxPool2d if c.pool == "max" else nn.AvgPool2d
        layers: list[nn.Module] = []
        c_in = 3
        if c.whiten:
            from .fast import Whitening

            layers += [Whitening(c_in), act()]  # airbench: the activation follows it
            c_in = layers[0].out_channels
        for w in c.widths():
            for i in range(c.convs_per_block):
                conv = nn.Conv2d(c_in, w, c.kernel_size, padding=c.kernel_size // 2,
                                 bias=not c.batch_norm)
                if c.dirac_init:
                    from .fast import dirac_init_

                    dirac_init_(conv)
                layers.append(conv)
                if c.early_pool and i == 0:
                    layers.append(pool(2))
                if c.batch_norm:
                    bn = nn.BatchNorm2d(w, momentum=c.bn_momentum)
                    if c.bn_frozen_scale:
                        bn.weight.requires_grad_(False)
                    layers.append(bn)
                layers.append(act())
                c_in = w
            if not c.early_pool:
                layers.append(pool(2))
        self.features = nn.Sequential(*layers)
        gpool = nn.AdaptiveAvgPool2d(1) if c.global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.head = nn.Sequential(
            gpool, nn.Flatten(), nn.Dropout(c.dropout), nn.Linear(c_in, c.n_classes),
        )
        self.head_scale = c.head_scale

    def forward(self, x):
        out = self.head(self.features(x))
        return out * self.head_scale if self.head_scale != 1.0 else out


class MLP(nn.Module):
    """The fully connected baseline of chapter 3 (the earlier exercise's model class)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        act = ACTIVATIONS[c.activation]
        layers: list[nn.Module] = [nn.Flatten()]
        d = 32 * 32 * 3
        for h in c.hidden:
            layers += [nn.Linear(d, int(h)), act(), nn.Dropout(c.dropout)]
            d = int(h)
        layers.append(nn.Linear(d, c.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def build_model(c: ModelConfig) -> nn.Module:
    """The model a config describes (chapter 1)."""
    return CNN(c) if c.kind == "cnn" else MLP(c)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def macs(c: ModelConfig) -> int:
    """Multiply-accumulates of one forward pass on a 32x32 image (convolutions and
    linear layers; chapter 6 caps the search's compute with it)."""
    if c.kind == "mlp":
        sizes = [32 * 32 * 3, *map(int, c.hidden), c.n_classes]
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    total, n, c_in = 0, 32, 3
    if c.whiten:
        from .fast import WHITEN_KERNEL, whiten_channels

        n = 32 - WHITEN_KERNEL + 1
        total += n * n * 3 * whiten_channels(3) * WHITEN_KERNEL**2
        c_in = whiten_channels(3)
    for w in c.widths():
        for i in range(c.convs_per_block):
            total += n * n * c_in * w * c.kernel_size**2
            if c.early_pool and i == 0:
                n //= 2
            c_in = w
        if not c.early_pool:
            n //= 2
    return total + c_in * c.n_classes


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every Conv2d, in order (chapter 1 uses the first)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def receptive_fields(c: ModelConfig) -> list[dict]:
    """Receptive field, jump and resolution after each layer of a CNN config.

    r_out = r_in + (k - 1) * j_in and j_out = j_in * stride (chapter 1).
    """
    rows, r, j, n = [], 1, 1, 32

    def pool(b, w):
        nonlocal r, j, n
        r += (2 - 1) * j
        j *= 2
        n //= 2
        rows.append(dict(layer=f"block{b + 1}.pool", kernel=2, stride=2, channels=w,
                         size=n, receptive_field=r, jump=j))

    for b, w in enumerate(c.widths()):
        for i in range(c.convs_per_block):
            r += (c.kernel_size - 1) * j
            rows.append(dict(layer=f"block{b + 1}.conv{i + 1}", kernel=c.kernel_size,
                             stride=1, channels=w, size=n, receptive_field=r, jump=j))
            if c.early_pool and i == 0:
                pool(b, w)
        if not c.early_pool:
            pool(b, w)
    return rows


def measured_receptive_fields(c: ModelConfig, size: int = 128) -> list[int]:
    """Receptive fields of the rows of :func:`receptive_fields`, measured with autograd.

    An untrained copy with all conv weights made positive, average pooling (max
    pooling passes gradient to one pixel per window) and batch norm in eval mode
    sees a ``size`` x ``size`` input of ones; the gradient of one central unit
    is non-zero on exactly the rows of its receptive field (chapter 1).
    """
    from dataclasses import replace

    torch.manual_seed(0)
    model = CNN(replace(c, pool="avg", dropout=0.0)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.abs_()
    out = []
    for i, m in enumerate(model.features):
        if not isinstance(m, (nn.AvgPool2d, nn.Conv2d)):
            continue
        x = torch.ones(1, 3, size, size, requires_grad=True)
        y = model.features[: i + 1](x)
        y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
        rows = torch.nonzero(x.grad[0].abs().sum(dim=(0, 2)))
        out.append(int(rows.max() - rows.min() + 1))
    return out


@torch.no_grad()
def activations(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Each conv layer's output after its activation, for inputs ``x`` (chapter 1)."""
    model.eval()
    feats = model.features if hasattr(model, "features") else model
    out, h = [], x
    for m in feats:
        h = m(h)
        if isinstance(m, tuple(ACTIVATIONS.values())):
            out.append(h.float().numpy())
    return out
