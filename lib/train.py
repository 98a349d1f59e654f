"""The training loop: one config in, per-epoch metrics and a trained model out.

Introduced in chapter 1 and explained in chapter 3. The whole dataset lives on
the training device as one uint8 tensor; a batch is an index slice; random
crops (zero padding 4) and horizontal flips run on that tensor on the device.
No PIL, no DataLoader workers: on two CPU cores this alone is several times
faster than the textbook pipeline (``python -m lib bench`` measures it).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import fast
from .data import Dataset, channel_stats, holdout_split, subset
from .models import ACTIVATIONS, ConfigError, ModelConfig, build_model, count_params, model_config

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "triangle")
PRECISIONS = ("auto", "fp32", "bf16")
PARAMETRISATIONS = ("coupled", "decoupled")
PAD_MODES = ("zeros", "reflect")
FLIPS = ("random", "alternating", "none")


@dataclass(frozen=True)
class Config:
    """Everything that determines a training run (chapter 1).

    Notebooks override fields with :func:`make_config`; the cache key is a hash
    of this object (plus the data fingerprint), so two equal configs are one run.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10              # passes over the training set
    batch_size: int = 256
    optimizer: str = "sgd"        # "sgd" (Nesterov momentum), "adam" or "adamw"
    lr: float = 0.05              # peak learning rate
    momentum: float = 0.9         # SGD momentum / Adam beta1
    weight_decay: float = 5e-4    # on conv and linear weights only (not biases, not BN)
    schedule: str = "onecycle"    # "constant", "cosine" or "onecycle" (linear up, linear down)
    warmup: float = 0.2           # fraction of steps spent warming up
    label_smoothing: float = 0.0
    augment: bool = True          # random crop (pad 4) + horizontal flip, on device
    n_train: int | None = None    # stratified slice of the training set (None: all)
    n_test: int | None = None     # stratified slice of the evaluation set (None: all)
    holdout: int = 0              # > 0: hold out this many training images as a validation
    #                               split and evaluate on it (metrics val_*), not on the test set
    seed: int = 0
    precision: str = "auto"       # "auto" (bf16 where the device supports it), "fp32", "bf16"
    channels_last: bool = True    # NHWC memory layout for convolutions
    compile: bool = False         # torch.compile the model
    save_weights: bool = True     # keep the final state dict in the run folder
    # --- the fast recipe's options (chapter 5, "What each technique buys", lib.fast);
    # each off by default, so every run cached before them keeps its key
    parametrisation: str = "coupled"  # "decoupled": lr and weight_decay per 1,024 examples
    #                               of a summed loss, independent of momentum (SGD only)
    bias_lr_scale: float = 1.0    # learning-rate multiplier of batch-norm biases
    whiten_bias_epochs: int | None = None  # epochs the whitening bias trains (None: all)
    lookahead_every: int = 0      # > 0: every this many steps, pull the weights to their EMA
    lookahead_decay: float = 0.95**5  # the EMA's final decay (its schedule: decay*(t/T)**3)
    translate: int = 4            # augmentation: random shift of up to this many pixels
    pad_mode: str = "zeros"       # "zeros" or "reflect" padding for the shift
    flip: str = "random"          # "random", "alternating" (every other epoch) or "none"
    tta: int = 0                  # test-time augmentation of the final evaluation:
    #                               0 none, 1 mirror, 2 mirror + translate (lib.fast)
    final_test: bool = False      # with holdout: also score the final model on the test set
    threads: int = 0              # CPU threads while training; 0: torch's default (all
    # cores), left out of the key. A CPU run is bit-identical at one thread count, not
    # across counts (summation order; measured about as large as seed to seed): N > 0
    # pins the count and puts it in the key (the search's CPU workers do)
    #                               (selection on validation, confirmation on test)

    def __post_init__(self):
        check_config(self)


def check_config(c: Config) -> None:
    """Raise ConfigError (one line, naming the option and what is allowed) for a value
    of the wrong type or out of range (chapter 1; every entry point builds a Config)."""
    def bad(name, value, allowed):
        raise ConfigError(f"option {name}={value!r} is invalid; allowed: {allowed}")

    if not isinstance(c.model, ModelConfig):
        bad("model", c.model, "a ModelConfig")
    check_types(c)
    if c.optimizer not in OPTIMIZERS:
        bad("optimizer", c.optimizer, OPTIMIZERS)
    if c.schedule not in SCHEDULES:
        bad("schedule", c.schedule, SCHEDULES)
    if c.precision not in PRECISIONS:
        bad("precision", c.precision, PRECISIONS)
    if c.epochs < 1:
        bad("epochs", c.epochs, ">= 1")
    if c.batch_size < 1:
        bad("batch_size", c.batch_size, ">= 1")
    if not (c.lr > 0 and math.isfinite(c.lr)):
        bad("lr", c.lr, "> 0")
    if c.weight_decay < 0:
        bad("weight_decay", c.weight_decay, ">= 0")
    if not 0 <= c.warmup < 1:
        bad("warmup", c.warmup, "0 <= warmup < 1")
    if c.holdout < 0:
        bad("holdout", c.holdout, ">= 0")
    if not 0 <= c.label_smoothing < 1:
        bad("label_smoothing", c.label_smoothing, "0 <= label_smoothing < 1")
    if not 0 <= c.momentum < 1:
        bad("momentum", c.momentum, "0 <= momentum < 1")
    for name in ("n_train", "n_test"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            bad(name, getattr(c, name), "None (all) or >= 1")
    if c.parametrisation not in PARAMETRISATIONS:
        bad("parametrisation", c.parametrisation, PARAMETRISATIONS)
    if c.parametrisation == "decoupled" and c.optimizer != "sgd":
        bad("parametrisation", c.parametrisation, "'coupled' unless optimizer='sgd'")
    if not (c.bias_lr_scale > 0 and math.isfinite(c.bias_lr_scale)):
        bad("bias_lr_scale", c.bias_lr_scale, "> 0")
    if c.whiten_bias_epochs is not None:
        if not c.model.whiten:
            bad("whiten_bias_epochs", c.whiten_bias_epochs, "None unless model.whiten=True")
        if c.whiten_bias_epochs < 0:
            bad("whiten_bias_epochs", c.whiten_bias_epochs, "None or >= 0")
    if c.lookahead_every < 0:
        bad("lookahead_every", c.lookahead_every, "0 (off) or >= 1 steps")
    if c.lookahead_every and not 0 < c.lookahead_decay < 1:
        bad("lookahead_decay", c.lookahead_decay, "0 < decay < 1 with lookahead_every > 0")
    if not 0 <= c.translate <= 16:
        bad("translate", c.translate, "0..16 pixels")
    if c.pad_mode not in PAD_MODES:
        bad("pad_mode", c.pad_mode, PAD_MODES)
    if c.flip not in FLIPS:
        bad("flip", c.flip, FLIPS)
    from .fast import TTA_LEVELS

    if c.tta not in TTA_LEVELS:
        bad("tta", c.tta, f"{sorted(TTA_LEVELS)} ({', '.join(TTA_LEVELS.values())})")
    if c.model.kind == "mlp" and c.tta:
        bad("tta", c.tta, "0 for an MLP")
    if not 0 <= c.threads <= MAX_THREADS:
        bad("threads", c.threads, f"0 (torch's default) or 1..{MAX_THREADS}")
    if not 0 <= c.seed < 2**32:
        bad("seed", c.seed, "0 <= seed < 2**32")
    if c.final_test and not c.holdout:
        bad("final_test", c.final_test, "False unless holdout > 0 (without it the "
            "evaluation split is the test set already)")


#: The most CPU threads a config may pin (more only exhausts the OpenMP runtime).
MAX_THREADS = 1024

#: Python types of the fields' annotations (``from __future__ import annotations``
#: keeps them as strings).
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
          "tuple": (tuple, list)}


def check_types(obj) -> None:
    """Every field of a Config or ModelConfig against its annotation: ``epochs=1.5``,
    ``lr='abc'`` or ``augment='maybe'`` raise ConfigError naming the field, the value
    and the type expected (chapter 1)."""
    for f in fields(obj):
        if f.name == "model":
            continue
        value = getattr(obj, f.name)
        names = [t.strip() for t in str(f.type).split("|")]
        if value is None and "None" in names:
            continue
        ok = any(isinstance(value, _TYPES[t]) for t in names if t in _TYPES)
        if isinstance(value, bool) and "bool" not in names:
            ok = False  # True is an int in Python, never an epoch count
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok and "float" in names and isinstance(value, int) and not isinstance(value, bool):
            try:  # an integer too large for a float (lr=10**400) is no number to train with
                float(value)
            except OverflowError:
                ok = False
        if not ok:
            want = " or ".join("a finite number" if t == "float" else
                               {"int": "an integer", "bool": "true/false", "str": "a string",
                                "tuple": "a list", "None": "None"}.get(t, t) for t in names)
            raise ConfigError(f"option {f.name}={value!r} has the wrong type; expected {want}")


def make_config(base: Config | None = None, **overrides) -> Config:
    """A Config with fields replaced; ``model_*`` or a ``model`` dict set model fields.

    Unknown names raise ConfigError listing the known ones (chapter 1).
    """
    base = base or Config()
    known = {f.name for f in fields(Config)}
    model_over = overrides.pop("model", {}) or {}
    if isinstance(model_over, ModelConfig):
        model_over = asdict(model_over)
    if not isinstance(model_over, dict):
        raise ConfigError(f"option model={model_over!r} has the wrong type; set model "
                          "fields one by one (model.depth=4) or give a mapping")
    model_over = dict(model_over)
    for k in [k for k in overrides if k.startswith("model.")]:
        model_over[k[len("model."):]] = overrides.pop(k)
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)}; known: {sorted(known)} "
            "and model.<field>"
        )
    model = model_config(**{**asdict(base.model), **model_over}) if model_over else base.model
    return replace(base, model=model, **overrides)


def config_dict(c: Config) -> dict:
    """JSON-ready dict of a config (tuples as lists)."""
    d = asdict(c)
    d["model"]["hidden"] = list(d["model"]["hidden"])
    d["model"]["block_widths"] = list(d["model"]["block_widths"])
    return d


#: Config fields added after runs were cached: left out of the key while they hold
#: these defaults, so that adding a field does not orphan every cached run.
#: Config fields added after analyses and study specs were first cached (chapter 5's
#: recipe): left out of those hashes while at their defaults, like the keys below.
ADDED_DEFAULTS = {
    "model.block_widths": [], "model.whiten": False, "model.dirac_init": False,
    "model.bn_frozen_scale": False, "model.bn_momentum": 0.1, "model.global_pool": "avg",
    "model.head_scale": 1.0, "parametrisation": "coupled", "bias_lr_scale": 1.0,
    "whiten_bias_epochs": None, "lookahead_every": 0, "lookahead_decay": 0.95**5,
    "translate": 4, "pad_mode": "zeros", "flip": "random", "tta": 0, "final_test": False,
    "threads": 0,
}
KEY_NEUTRAL_DEFAULTS = {"holdout": 0, "model.early_pool": False, **ADDED_DEFAULTS}


def _strip(d: dict, defaults: dict) -> dict:
    for name, default in defaults.items():
        *parents, leaf = name.split(".")
        sub = d
        for p in parents:
            sub = sub[p]
        if leaf in sub and sub[leaf] == default:
            del sub[leaf]
    return d


def key_dict(c: Config) -> dict:
    """:func:`config_dict` without the fields that still hold their key-neutral default:
    what a run's key hashes (chapter 1), so that adding an option orphans no cached run."""
    return _strip(config_dict(c), KEY_NEUTRAL_DEFAULTS)


def params_dict(c) -> dict:
    """:func:`config_dict` (of a Config or of its dict) without the fields added since
    analyses and study specs were first cached, while at their defaults: what cached
    analyses and a study's stored spec hash or compare (chapters 6 and 8)."""
    d = config_dict(c) if isinstance(c, Config) else json_copy(c)
    return _strip(d, ADDED_DEFAULTS)


def json_copy(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))


def config_from_dict(d: dict) -> Config:
    d = dict(d)
    return make_config(Config(), model=d.pop("model", {}), **d)


# --------------------------------------------------------------------------
# devices, precision, schedules
# --------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda if present, else mps, else cpu; anything else must exist."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device {device!r} is not a device name; use auto, cpu, cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: no CUDA GPU is visible; use auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). "auto" uses bf16 on CUDA GPUs with bf16 and on
    CPUs with native bf16 (the avx512_bf16 or amx_bf16 flag), where it is measured to
    keep accuracy (``python -m lib bench --check-precision``); fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        # native bf16 only: on an AVX2-only CPU oneDNN emulates it, and a GELU network's
        # training step was measured about 20 times slower than in fp32
        native = {"avx512_bf16", "amx_bf16"} & set(cpu_flags().split())
        try:
            return torch.bfloat16 if native and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
                else None
        except (AttributeError, RuntimeError):
            return None
    return None


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total`` (chapter 3)."""
    if schedule == "triangle":
        return fast.lr_triangle(step, total, warmup)
    w = int(warmup * total)
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    t = (step - w) / max(1, total - w)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return max(0.0, 1.0 - t)  # onecycle: linear decay to zero


def make_optimizer(c: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW over the trainable parameters (chapter 3).

    Coupled (the default): weight decay on conv and linear weights only, the given lr.
    Decoupled (chapter 5, :func:`lib.fast.decoupled_to_torch`): lr and weight decay are
    per 1,024 examples of a summed loss; every parameter decays by the same amount per
    step, and batch-norm biases take ``bias_lr_scale`` times the learning rate.
    """
    bn_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
              for p in m.parameters()}
    if c.parametrisation == "decoupled":
        lr, wd = fast.decoupled_to_torch(c.lr, c.momentum, c.weight_decay, c.batch_size)
        params = [p for p in model.parameters() if p.requires_grad]
        bn = [p for p in params if id(p) in bn_ids]
        other = [p for p in params if id(p) not in bn_ids]
        lr_b = lr * c.bias_lr_scale
        groups = [dict(params=bn, lr=lr_b, weight_decay=wd * lr / lr_b),
                  dict(params=other, lr=lr, weight_decay=wd)]
        return torch.optim.SGD(groups, lr=lr, momentum=c.momentum, nesterov=c.momentum > 0)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=c.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    if c.bias_lr_scale != 1.0:
        groups[1:] = [dict(params=[p for p in no_decay if id(p) in bn_ids], weight_decay=0.0,
                           lr=c.lr * c.bias_lr_scale),
                      dict(params=[p for p in no_decay if id(p) not in bn_ids],
                           weight_decay=0.0)]
    if c.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)
    cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=c.lr, betas=(c.momentum, 0.999))


# --------------------------------------------------------------------------
# on-device data
# --------------------------------------------------------------------------
class DeviceData:
    """uint8 NCHW tensors on the device (NHWC memory: channels_last for free)."""

    def __init__(self, ds: Dataset, device: torch.device):
        def put(x):
            return torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2)

        self.x_train, self.x_test = put(ds.x_train), put(ds.x_test)
        self.y_train = torch.from_numpy(ds.y_train).long().to(device)
        self.y_test = torch.from_numpy(ds.y_test).long().to(device)
        mean, std = channel_stats(ds.x_train)
        def col(v):
            return torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        self.scale, self.shift = col(1 / (255 * std)), col(-mean / std)
        self.mean, self.std = mean, std

    def normalise(self, x_uint8: torch.Tensor, channels_last: bool) -> torch.Tensor:
        x = x_uint8.float() * self.scale + self.shift
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


def to_input(ds: Dataset, x_uint8: np.ndarray, stats=None) -> torch.Tensor:
    """NHWC uint8 images -> the normalised float NCHW tensor a model of ``ds`` expects.
    ``stats``: ``channel_stats(ds.x_train)`` when the caller already has it (computing
    it reads the whole training set, so a loop over batches passes it once)."""
    mean, std = stats if stats is not None else channel_stats(ds.x_train)
    x = torch.from_numpy(np.ascontiguousarray(x_uint8)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / \
        torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and a random horizontal flip, per image.

    Runs on whatever device ``x`` is on; random numbers come from ``gen`` (CPU),
    so a seed fixes the augmentation on every device.
    """
    b, dev = x.shape[0], x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    x = fast.shift_crop(x, dy, dx, pad, "zeros")
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def default_augmentation(c: Config) -> bool:
    """True when a run uses the book's first augmentation (zero-padded crop of 4 and a
    random flip), whose random stream every run cached before chapter 5 depends on."""
    return c.translate == 4 and c.pad_mode == "zeros" and c.flip == "random"


def augment_float(x: torch.Tensor, flips: torch.Tensor, gen: torch.Generator,
                  c: Config) -> torch.Tensor:
    """The fast recipe's augmentation of normalised images (chapter 5): a random shift
    of up to ``c.translate`` pixels (zero or reflect padding), then the epoch's flips."""
    b, dev = x.shape[0], x.device
    if c.translate:
        dy = torch.randint(0, 2 * c.translate + 1, (b,), generator=gen).to(dev)
        dx = torch.randint(0, 2 * c.translate + 1, (b,), generator=gen).to(dev)
        x = fast.shift_crop(x, dy, dx, c.translate, c.pad_mode)
    return torch.where(flips.to(dev)[:, None, None, None], x.flip(3), x)


# --------------------------------------------------------------------------
# weight statistics (chapter 7 reads them)
# --------------------------------------------------------------------------
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


def array_stats(name: str, w: np.ndarray) -> dict:
    """Norm, mean, std, min, max and quantiles of one weight array (any framework)."""
    w = np.asarray(w, dtype=np.float32).ravel()
    q = np.quantile(w[:1 << 24], QUANTILES)
    return dict(layer=name, numel=w.size, norm=float(np.linalg.norm(w.astype(np.float64))),
                mean=float(w.mean()), std=float(w.std(ddof=1)) if w.size > 1 else 0.0,
                min=float(w.min()), max=float(w.max()),
                **{f"q{round(100 * a):02d}": float(v) for a, v in zip(QUANTILES, q)})


@torch.no_grad()
def weight_stats(model: torch.nn.Module) -> list[dict]:
    """Per-layer norm, mean, std, min, max and quantiles of every weight matrix/kernel
    (chapter 7 draws their distributions over training from these)."""
    return [array_stats(name, p.detach().float().cpu().numpy())
            for name, p in model.named_parameters() if p.ndim > 1]


@torch.no_grad()
def activation_stats(model: torch.nn.Module, x: torch.Tensor, amp_dtype=None) -> list[dict]:
    """Per activation layer, on the probe images ``x``: the fraction of units that are
    never positive on any of them (``dead_frac``: a dead ReLU unit/channel) and of
    outputs that are exactly zero (``zero_frac``) (chapter 7)."""
    acts = tuple(ACTIVATIONS.values())
    rows, hooks = [], []

    def hook(name):
        def f(_m, _inp, out):
            out = out.float()
            alive = out.amax(dim=(0, 2, 3)) > 0 if out.ndim == 4 else out.amax(0) > 0
            rows.append(dict(layer=name, units=alive.numel(),
                             dead_frac=1 - alive.float().mean().item(),
                             zero_frac=(out == 0).float().mean().item()))
        return f

    for name, m in model.named_modules():
        if isinstance(m, acts):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------
@dataclass
class Result:
    """What :func:`fit` returns: per-epoch rows, weight and activation stats, summary,
    model, and the logits on the evaluation split (test, or validation with holdout)."""

    history: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    activations: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    test_logits: np.ndarray | None = None
    tta_logits: np.ndarray | None = None   # with test-time augmentation (config.tta > 0)
    final_logits: dict = field(default_factory=dict)  # final_test: {"test": .., "test_tta": ..}


@torch.no_grad()
def evaluate(model, dd: DeviceData, c: Config, amp_dtype, batch_size: int = 1000,
             tta: int = 0):
    """Test loss, accuracy and logits (float32 numpy); ``tta`` > 0 averages the logits
    over the views of :func:`lib.fast.tta_views` (chapter 5)."""
    return evaluate_on(model, dd, dd.x_test, dd.y_test, c, amp_dtype, batch_size, tta)


@torch.no_grad()
def evaluate_on(model, dd: DeviceData, x_uint8, y, c: Config, amp_dtype,
                batch_size: int = 1000, tta: int = 0):
    """Loss, accuracy and logits of ``model`` on uint8 NCHW images ``x_uint8`` (normalised
    as the training images are)."""
    model.eval()
    logits = []
    for i in range(0, len(y), batch_size):
        x = dd.normalise(x_uint8[i:i + batch_size], c.channels_last)
        with torch.autocast(y.device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits.append(fast.tta_logits(model, x, tta))
    out = torch.cat(logits)
    loss = F.cross_entropy(out, y).item()
    acc = (out.argmax(1) == y).float().mean().item()
    return loss, acc, out.cpu().numpy()


def probe_indices(y: np.ndarray, n: int = 256) -> np.ndarray:
    """Up to ``n`` indices of ``y`` taken round-robin over the classes (the first image
    of each class, then the second, ...): a fixed probe whose every prefix is balanced."""
    per = [np.flatnonzero(y == k) for k in np.unique(y)]
    order = [p[i] for i in range(max(map(len, per))) for p in per if i < len(p)]
    return np.array(order[:n], dtype=np.int64)


def prepare_data(c: Config, ds: Dataset) -> tuple[Dataset, str]:
    """The data a run trains and evaluates on, and the evaluation split's name: with
    ``holdout`` a validation split held out of the training set ("val"), else the
    test set ("test"); then the config's stratified slices."""
    ev = "val" if c.holdout else "test"
    n = len(ds.y_train)
    if c.holdout and not c.holdout < n:
        raise ConfigError(f"option holdout={c.holdout} is invalid for {n} training images; "
                          f"allowed: 0 (none) or 1..{n - 1}")
    classes = int(max(ds.y_train.max(initial=0), ds.y_test.max(initial=0))) + 1
    if c.model.n_classes < classes:
        raise ConfigError(f"model option n_classes={c.model.n_classes} is fewer than the "
                          f"data's {classes} classes")
    if c.holdout:
        ds = holdout_split(ds, c.holdout)
    if c.n_train is not None or c.n_test is not None:
        ds = subset(ds, c.n_train, c.n_test, seed=c.seed)
    return ds, ev


def fit(c: Config, ds: Dataset, device: str | torch.device = "auto", tracker=None,
        callbacks=(), progress: bool | None = None, checkpoint=None) -> Result:
    """Train ``c`` on ``ds``; return a :class:`Result` (chapter 1, explained in chapter 3).

    ``callbacks`` are called as ``cb(epoch, row, model)`` after each epoch; one
    that returns True stops training (the search's pruner uses this). A non-finite
    loss stops training and is recorded as ``status="diverged"``, not raised.
    ``checkpoint`` (an object with ``load() -> dict | None`` and ``save(dict)``, see
    :class:`lib.runs.Resume`) saves the whole training state after every epoch but the
    last and, when it holds one, continues from it: a run killed after epoch k goes on
    at epoch k + 1 and ends as it would have without the interruption.
    """
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if c.threads and dev.type == "cpu" and torch.get_num_threads() != c.threads:
        before = torch.get_num_threads()
        torch.set_num_threads(c.threads)
        try:
            return fit(c, ds, dev, tracker, callbacks, progress, checkpoint)
        finally:
            torch.set_num_threads(before)
    amp_dtype = resolve_precision(c.precision, dev)
    torch.manual_seed(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    fingerprint = ds.fingerprint  # of the whole dataset: it is part of the run's key
    full = ds
    ds, ev = prepare_data(c, ds)
    dd = DeviceData(ds, dev)
    n = len(dd.y_train)
    # a fixed, class-balanced probe of the evaluation split (some copies sort it by class)
    pidx = torch.from_numpy(probe_indices(ds.y_test)).to(dev)
    probe = dd.normalise(dd.x_test[pidx], c.channels_last)

    model = build_model(c.model).to(dev)
    if c.model.whiten:  # its filters come from the training images' 2x2 patches
        fast.init_whitening(model, dd.normalise(dd.x_train[:fast.WHITEN_IMAGES], False))
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_params(model)
    fwd = torch.compile(model) if c.compile else model
    opt = make_optimizer(c, model)
    steps_per_epoch = max(1, n // c.batch_size)  # drop the last partial batch
    total = steps_per_epoch * c.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, c.schedule, c.warmup))
    reduction = "sum" if c.parametrisation == "decoupled" else "mean"
    lookahead = fast.Lookahead(model) if c.lookahead_every else None
    flip_base, step = None, 0

    if tracker is not None:
        tracker.start(model, probe, dd.x_test[pidx].permute(0, 2, 3, 1).cpu().numpy(),
                      dd.y_test[pidx].cpu().numpy(), ds.classes)
    res = Result(model=model)
    res.weights += [dict(epoch=0, **r) for r in weight_stats(model)]
    res.activations += [dict(epoch=0, **r) for r in activation_stats(model, probe, amp_dtype)]
    if progress is None:
        progress = bool(os.environ.get("LIB_PROGRESS", "")) or _stderr_is_tty()
    bar = tqdm(total=total, disable=not progress, unit="step", leave=False,
               desc=f"{c.model.kind} seed {c.seed}")
    status, train_time, eval_time, t_start = "ok", 0.0, 0.0, time.perf_counter()
    first, resumes = 1, []
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:  # a killed run: continue after its last saved epoch
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        if lookahead is not None:
            lookahead.ema = saved["lookahead"]
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["rng"])
        flip_base, step, first = saved["flip_base"], saved["step"], saved["epoch"] + 1
        res.history, res.weights, res.activations = (saved["history"], saved["weights"],
                                                     saved["activations"])
        train_time, eval_time = saved["train_time"], saved["eval_time"]
        t_start -= saved["elapsed"]
        resumes = saved["resumes"] + [dict(epoch=saved["epoch"], **saved["hardware"])]
        bar.update(step)
    for epoch in range(first, c.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        if c.whiten_bias_epochs is not None and epoch > c.whiten_bias_epochs:
            for b in fast.whitening_bias(model):
                b.requires_grad_(False)
        perm = torch.randperm(n, generator=gen).to(dev)
        if c.augment and not default_augmentation(c):
            flips, flip_base = fast.flip_mask(n, epoch, flip_base, gen, c.flip)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = 0
        # [the training step: chapter 3 shows from here]
        for s in range(steps_per_epoch):
            idx = perm[s * c.batch_size:(s + 1) * c.batch_size]
            xb, yb = dd.x_train[idx], dd.y_train[idx]
            if c.augment and default_augmentation(c):
                xb = dd.normalise(augment_batch(xb, gen), c.channels_last)
            elif c.augment:
                xb = augment_float(dd.normalise(xb, False), flips[idx.cpu()], gen, c)
                xb = xb.contiguous(memory_format=torch.channels_last
                                   if c.channels_last else torch.contiguous_format)
            else:
                xb = dd.normalise(xb, c.channels_last)
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                out = fwd(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=c.label_smoothing,
                                       reduction=reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if lookahead is not None and step % c.lookahead_every == 0:
                lookahead.update(model, fast.lookahead_decay(step, total, c.lookahead_decay))
            loss_sum += loss.detach() * (1 if reduction == "sum" else len(yb))
            correct += (out.argmax(1) == yb).sum()
            seen += len(yb)
            # [to here]
            bar.update()
            if (s % 25 == 0 or s == steps_per_epoch - 1) and not torch.isfinite(loss_sum):
                status = "diverged"
                break
        if lookahead is not None and epoch == c.epochs and status == "ok":
            lookahead.update(model, 1.0)  # the last step: the model becomes its average
        if dev.type == "cuda":
            torch.cuda.synchronize()
        epoch_train_s = time.perf_counter() - t0
        train_time += epoch_train_s
        t1 = time.perf_counter()
        test_loss, test_acc, logits = evaluate(fwd, dd, c, amp_dtype)
        eval_time += time.perf_counter() - t1
        row = {"epoch": epoch, "train_loss": loss_sum.item() / max(seen, 1),
               "train_acc": correct.item() / max(seen, 1), f"{ev}_loss": test_loss,
               f"{ev}_acc": test_acc, "lr": opt.param_groups[0]["lr"],
               "time": time.perf_counter() - t_start, "train_s": epoch_train_s}
        res.history.append(row)
        res.weights += [dict(epoch=epoch, **r) for r in weight_stats(model)]
        res.activations += [dict(epoch=epoch, **r)
                            for r in activation_stats(model, probe, amp_dtype)]
        res.test_logits = logits
        bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.3f}", acc=f"{test_acc:.3f}")
        if tracker is not None:
            tracker.epoch(epoch, row, model)
        if status == "diverged":
            break
        if checkpoint is not None and epoch < c.epochs:
            if tracker is not None:
                tracker.flush()
            checkpoint.save(dict(
                epoch=epoch, model=model.state_dict(), opt=opt.state_dict(),
                sched=sched.state_dict(), lookahead=lookahead and lookahead.ema,
                gen=gen.get_state(), rng=torch.get_rng_state(), flip_base=flip_base,
                step=step, history=res.history, weights=res.weights,
                activations=res.activations, train_time=train_time, eval_time=eval_time,
                elapsed=time.perf_counter() - t_start, resumes=resumes,
                hardware=hardware(dev)))
        if any(cb(epoch, row, model) for cb in callbacks):
            status = "stopped"
            break
    bar.close()
    if c.tta and status != "diverged":
        t1 = time.perf_counter()
        _, acc_tta, res.tta_logits = evaluate(fwd, dd, c, amp_dtype, tta=c.tta)
        eval_time += time.perf_counter() - t1
        res.summary[f"{ev}_acc_tta"] = acc_tta
    if c.final_test and status != "diverged":
        t1 = time.perf_counter()
        xt = torch.from_numpy(np.ascontiguousarray(full.x_test)).to(dev).permute(0, 3, 1, 2)
        yt = torch.from_numpy(full.y_test).long().to(dev)
        for level in sorted({0, c.tta}):
            _, acc, logits = evaluate_on(fwd, dd, xt, yt, c, amp_dtype, tta=level)
            name = "test_tta" if level else "test"
            res.summary[f"{name.replace('test', 'test_acc')}"] = acc
            res.final_logits[name] = logits
        eval_time += time.perf_counter() - t1

    last = res.history[-1]
    res.summary = {
        **res.summary, "status": status, "epochs_run": len(res.history), "eval_split": ev,
        f"{ev}_acc": last[f"{ev}_acc"], f"{ev}_loss": last[f"{ev}_loss"],
        "train_acc": last["train_acc"], "train_loss": last["train_loss"],
        f"best_{ev}_acc": max(r[f"{ev}_acc"] for r in res.history),
        "n_params": n_params, "train_images": n, f"{ev}_images": len(dd.y_test)}
    res.summary.update(
        train_time_s=train_time, eval_time_s=eval_time,
        images_per_s=len(res.history) * steps_per_epoch * c.batch_size / max(train_time, 1e-9),
        amp_dtype=str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        data_source=ds.source, data_fingerprint=fingerprint,
        **hardware(dev),
    )
    if resumes:  # the epoch each earlier, killed part reached and its machine
        res.summary["resumed"] = resumes
    if tracker is not None:
        tracker.finish(config_dict(c), res.summary)
    return res


def _stderr_is_tty() -> bool:
    import sys
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def hardware(dev: torch.device) -> dict:
    """Device, processor, thread count and library versions, for the summary."""
    name = platform.processor() or platform.machine()
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    elif dev.type == "cpu":
        name = next(iter(cpuinfo("model name")), name)
    return dict(device=dev.type, device_name=name, threads=torch.get_num_threads(),
                cpu_count=os.cpu_count(), cpu_flags=cpu_flags(), torch=torch.__version__,
                python=platform.python_version())


#: The CPU features that decide which precision is fast (bf16 autocast on a CPU without
#: native bf16 was measured about 20 times slower for a GELU network).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpuinfo(key: str, path: str = "/proc/cpuinfo") -> list[str]:
    """The values of ``key`` in /proc/cpuinfo, one per logical CPU (empty where there is
    no such file, as on macOS)."""
    try:
        with open(path) as f:
            return [ln.split(":", 1)[1].strip() for ln in f
                    if ln.split(":", 1)[0].strip() == key and ":" in ln]
    except OSError:
        return []


def cpu_flags() -> str:
    """Which of :data:`CPU_FLAGS` this machine's CPU has, space-separated."""
    flags = cpuinfo("flags")
    if not flags:
        return "unknown"
    have = flags[0].split()
    return " ".join(fl for fl in CPU_FLAGS if fl in have)
