"""The fast-training techniques (chapter 5, "What each technique buys").

Each piece is written from its paper's description (Jordan 2024, "94% on CIFAR-10
in 3.29 seconds on a single GPU", arXiv:2404.00498; Page 2018, "How to train your
ResNet") and switched on by a field of :class:`lib.train.Config` or
:class:`lib.models.ModelConfig`; all are off by default. The chapter includes this
file's functions with ``literalinclude``, so they are kept short and plain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Side of the whitening layer's patches; two filters (+v, -v) per eigenvector.
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4
#: How many training images estimate the patch covariance (airbench uses 5,000).
WHITEN_IMAGES = 5000


def whiten_channels(c_in: int, k: int = WHITEN_KERNEL) -> int:
    """Output channels of the whitening layer: +/- one filter per patch dimension."""
    return 2 * c_in * k * k


# --------------------------------------------------------------------------
# 1. the frozen patch-whitening first layer
# --------------------------------------------------------------------------
class Whitening(nn.Conv2d):
    """A 2x2 convolution (no padding) whose filters whiten the image's 2x2 patches.

    Its weights are set once from the training set by :func:`init_whitening` and
    never trained; its bias trains for the first ``whiten_bias_epochs`` epochs.
    """

    def __init__(self, c_in: int = 3, k: int = WHITEN_KERNEL):
        super().__init__(c_in, whiten_channels(c_in, k), k, padding=0, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)


def patches(x: torch.Tensor, k: int = WHITEN_KERNEL) -> torch.Tensor:
    """Every k x k patch of the NCHW images ``x``, flattened: (N * positions, C*k*k)."""
    c = x.shape[1]
    p = x.unfold(2, k, 1).unfold(3, k, 1)           # N, C, H', W', k, k
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).float()


@torch.no_grad()
def whitening_weights(x: torch.Tensor, k: int = WHITEN_KERNEL,
                      eps: float = WHITEN_EPS) -> torch.Tensor:
    """Filters that map a patch onto the eigenvectors of the patch covariance, each
    scaled by 1/sqrt(eigenvalue + eps), as +v and -v copies: (2*C*k*k, C, k, k)."""
    p = patches(x, k).double()
    cov = p.T @ p / len(p)
    eigval, eigvec = torch.linalg.eigh(cov)          # ascending eigenvalues
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)   # largest first
    w = (eigvec / torch.sqrt(eigval + eps)).T         # one row per eigenvector
    w = w.reshape(-1, x.shape[1], k, k).float()
    return torch.cat([w, -w])


@torch.no_grad()
def init_whitening(model: nn.Module, x: torch.Tensor) -> bool:
    """Set every :class:`Whitening` layer of ``model`` from the normalised training
    images ``x`` (NCHW float); False if the model has none."""
    found = False
    for m in model.modules():
        if isinstance(m, Whitening):
            m.weight.copy_(whitening_weights(x, m.kernel_size[0]).to(m.weight))
            found = True
    return found


def whitening_bias(model: nn.Module) -> list[nn.Parameter]:
    return [m.bias for m in model.modules() if isinstance(m, Whitening)]


# --------------------------------------------------------------------------
# 2. identity (Dirac) initialisation
# --------------------------------------------------------------------------
@torch.no_grad()
def dirac_init_(conv: nn.Conv2d) -> nn.Conv2d:
    """Keep the default random init, but make the first ``in_channels`` filters the
    identity: at the start the conv passes its input through (plus new channels)."""
    n = min(conv.in_channels, conv.out_channels)
    nn.init.dirac_(conv.weight[:n])
    return conv


# --------------------------------------------------------------------------
# 3. the decoupled parametrisation of SGD
# --------------------------------------------------------------------------
def decoupled_to_torch(lr: float, momentum: float, weight_decay: float,
                       batch_size: int) -> tuple[float, float]:
    """PyTorch SGD's (lr, weight_decay) for a summed loss, from a learning rate and a
    weight decay given per 1,024 examples and independent of the momentum.

    The learning rate is divided by 1,024 and by airbench's momentum factor
    ``1 + 1/(1 - momentum)``, so that the decoupled value changes the step's size in
    the same proportion whatever the momentum and batch size. (In PyTorch's Nesterov SGD
    a steady gradient gives steps ``1/(1 - momentum)`` times the gradient step, one less
    than that factor: the constant is airbench's convention for the units, not the
    steady-state gain.) The decay is applied through PyTorch's coupled
    ``weight_decay``, so it is divided by the learning rate.
    """
    scale = 1024 * (1 + 1 / (1 - momentum))
    torch_lr = lr / scale
    torch_wd = weight_decay * batch_size / scale / torch_lr
    return torch_lr, torch_wd


def coupled_to_decoupled(lr: float, momentum: float, weight_decay: float,
                         batch_size: int) -> tuple[float, float]:
    """The decoupled (lr, weight_decay) that take the same SGD steps as PyTorch's
    ``lr`` and ``weight_decay`` on a *mean* loss over ``batch_size`` examples (chapter
    3's recipe): the inverse of :func:`decoupled_to_torch` after the mean-to-sum change
    of the loss (the gradient is ``batch_size`` times larger)."""
    scale = 1024 * (1 + 1 / (1 - momentum))
    torch_lr = lr / batch_size  # the same step on a summed loss
    return torch_lr * scale, lr * weight_decay * scale / batch_size


# --------------------------------------------------------------------------
# 4. lookahead: an exponential moving average of the weights on a schedule
# --------------------------------------------------------------------------
def lookahead_decay(step: int, total: int, decay: float) -> float:
    """The EMA's decay at ``step``: ``decay * (step / total)**3``, 0 at the start (the
    average follows the weights) and ``decay`` at the end (it averages more)."""
    return decay * (step / max(total, 1)) ** 3


class Lookahead:
    """Keeps an exponential moving average of every float tensor of a model's state
    (weights and batch-norm statistics) and writes it back into the model:
    ``ema = decay * ema + (1 - decay) * w``, then ``w = ema``."""

    def __init__(self, model: nn.Module):
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()
                    if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for k, avg in self.ema.items():
            avg.lerp_(state[k], 1 - decay)
            state[k].copy_(avg)


# --------------------------------------------------------------------------
# 5. augmentation: translate with reflect padding, alternating flip
# --------------------------------------------------------------------------
def flip_mask(n: int, epoch: int, base: torch.Tensor | None, gen: torch.Generator,
              mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``n`` images to mirror at ``epoch`` (1-based), and the base mask.

    ``"random"``: a fresh coin per image and epoch. ``"alternating"``: a coin per
    image at the first epoch, then every image flips each epoch, so every image is
    seen mirrored exactly every other epoch. ``"none"``: never.
    """
    if mode == "none":
        return torch.zeros(n, dtype=torch.bool), base
    if mode == "random" or base is None:
        base = torch.rand(n, generator=gen) < 0.5
        if mode == "random":
            return base, None
    return base ^ (epoch % 2 == 0), base


def shift_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int,
               pad_mode: str = "zeros") -> torch.Tensor:
    """Each image of ``x`` padded by ``pad`` (zeros or reflection) and cropped back to
    its size at offset (dy, dx) in 0..2*pad."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad,) * 4) if pad_mode == "zeros" else F.pad(x, (pad,) * 4, mode="reflect")
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    xp = xp.gather(2, rows.expand(b, c, h, w + 2 * pad))
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return xp.gather(3, cols.expand(b, c, h, w))


# --------------------------------------------------------------------------
# 6. test-time augmentation
# --------------------------------------------------------------------------
TTA_LEVELS = {0: "none", 1: "mirror", 2: "mirror + translate"}


def tta_views(x: torch.Tensor, level: int) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs whose weighted logits make the TTA prediction.

    Level 0: the image. Level 1: the image and its mirror, 1/2 each. Level 2: half
    the weight on level 1, the other half on level 1 of the image shifted by one
    pixel up-left and down-right (reflect padding): 1/4, 1/4, 1/8 x 4.
    """
    if level not in TTA_LEVELS:
        raise ValueError(f"TTA level {level!r}: use one of {sorted(TTA_LEVELS)}")
    if level == 0:
        return [(1.0, x)]
    views = [(0.5, x), (0.5, x.flip(3))]
    if level == 1:
        return views
    xp = F.pad(x, (1,) * 4, mode="reflect")
    h, w = x.shape[2:]
    shifted = [xp[:, :, :h, :w], xp[:, :, 2:2 + h, 2:2 + w]]
    out = [(0.5 * a, v) for a, v in views]
    for s in shifted:
        out += [(0.125, s), (0.125, s.flip(3))]
    return out


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """The weighted mean of ``model``'s float logits over :func:`tta_views`."""
    return sum(a * model(v).float() for a, v in tta_views(x, level))


def lr_triangle(step: int, total: int, warmup: float, start: float = 0.2,
                end: float = 0.07) -> float:
    """airbench's schedule: linear from ``start`` to 1 over the warm-up fraction, then
    linear to ``end`` at the last step (multiplier of the peak learning rate)."""
    w = int(warmup * total)
    if step < w:
        return start + (1 - start) * step / w
    return 1 + (end - 1) * (step - w) / max(1, total - w)
