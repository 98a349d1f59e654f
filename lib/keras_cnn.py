"""Chapter 8: the chapter-3 CNN in TensorFlow/Keras 3, trained with ``model.fit``.

Same architecture (built from the same :class:`lib.models.ModelConfig`), same data
and split, same augmentation (zero-pad 4, random 32x32 crop, horizontal flip), same
normalisation, optimiser (SGD with Nesterov momentum), weight decay on kernels only,
learning-rate schedule and epoch budget as :func:`lib.train.fit`. Where Keras's
defaults differ from PyTorch's, this module sets PyTorch's values and says so
(:data:`DEFAULTS_CHANGED`); chapter 8 discusses each difference.

Runs are cached like every other run (``lib.runs.get(..., framework="keras")``):
metrics per epoch, per-layer weight statistics per epoch, test logits, the weights,
and TensorBoard logs written by Keras's own ``TensorBoard`` callback.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .data import Dataset, channel_stats
from .models import ConfigError, ModelConfig
from .train import Config, Result, array_stats, hardware, prepare_data, resolve_precision

#: What Keras does by default and what we set instead, so that the two frameworks
#: train the same model (chapter 8 prints this table).
DEFAULTS_CHANGED = [
    ("conv/dense kernel init", "Glorot uniform",
     "U(±1/√fan_in) (PyTorch's kaiming_uniform(a=√5))"),
    ("dense bias init", "zeros", "U(±1/√fan_in)"),
    ("BatchNorm momentum", "0.99 (Keras keeps 99% of the old average)",
     "0.9 (PyTorch's momentum=0.1 is the weight of the new batch)"),
    ("BatchNorm epsilon", "1e-3", "1e-5"),
    ("weight decay", "optimizer weight_decay: decoupled, on every variable",
     "L2 penalty wd/2·‖w‖² on kernels only (coupled, as torch.optim.SGD's weight_decay)"),
    ("learning-rate schedule", "none", "the same warm-up + linear decay, per step"),
]


class KerasUnavailable(ImportError):
    """TensorFlow/Keras cannot be imported (chapter 8 prints the reason in one line)."""


def _import():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")      # no C++ info/warning banners
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        from . import import_tensorflow_quietly

        tf = import_tensorflow_quietly(required=True)
        if tf is None:
            raise ImportError("No module named 'tensorflow'")
        import keras
    except ImportError as e:
        raise KerasUnavailable(
            f"TensorFlow/Keras is not importable ({e}); install it with "
            "`pip install -e '.[keras]'` (or `make`) to run chapter 8") from None
    if keras.backend.backend() != "tensorflow":
        raise KerasUnavailable(f"Keras runs on the {keras.backend.backend()!r} backend; "
                               "set KERAS_BACKEND=tensorflow")
    return tf, keras


def unavailable_reason() -> str | None:
    """None when TensorFlow and Keras import, else one line saying why and what to do."""
    try:
        _import()
    except KerasUnavailable as e:
        return str(e)
    return None


def versions() -> dict:
    tf, keras = _import()
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------
def build_model(m: ModelConfig, weight_decay: float = 0.0, seed: int = 0):
    """The CNN ``m`` describes as a Keras functional model (channels-last input).

    ``weight_decay`` becomes an L2 penalty ``wd/2 * sum(w**2)`` on every kernel:
    its gradient ``wd * w`` is exactly what PyTorch's SGD adds (chapter 8)."""
    tf, keras = _import()
    L = keras.layers
    if m.kind != "cnn":
        raise ConfigError(f"lib.keras_cnn builds CNNs only; got kind={m.kind!r}")
    if m.early_pool:
        raise ConfigError("lib.keras_cnn does not build early_pool CNNs")
    torch_init = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform", seed=seed)
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    pool = L.MaxPooling2D if m.pool == "max" else L.AveragePooling2D

    inputs = keras.Input((32, 32, 3), name="image")
    x, c_in = inputs, 3
    for b, w in enumerate(m.widths(), 1):
        for i in range(1, m.convs_per_block + 1):
            x = L.Conv2D(w, m.kernel_size, padding="same", use_bias=not m.batch_norm,
                         kernel_initializer=torch_init, kernel_regularizer=reg,
                         bias_initializer=_uniform(m.kernel_size**2 * c_in, seed),
                         name=f"block{b}_conv{i}")(x)
            if m.batch_norm:
                x = L.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"block{b}_bn{i}")(x)
            x = L.Activation(m.activation, name=f"block{b}_{m.activation}{i}")(x)
            c_in = w
        x = pool(2, name=f"block{b}_pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(m.dropout, name="dropout")(x)
    out = L.Dense(m.n_classes, kernel_initializer=torch_init, kernel_regularizer=reg,
                  bias_initializer=_uniform(c_in, seed), name="logits")(x)
    return keras.Model(inputs, out, name="cnn")


def _uniform(fan_in: int, seed: int):
    _, keras = _import()
    b = 1 / np.sqrt(fan_in)
    return keras.initializers.RandomUniform(-b, b, seed=seed)


def count_params(model) -> int:
    """Trainable parameters (BatchNorm's running averages are not)."""
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def from_torch(model, torch_model) -> None:
    """Copy a trained :class:`lib.models.CNN`'s weights into the Keras ``model`` of the
    same config (chapter 8: the same weights give the same predictions). Conv kernels
    go from (out, in, h, w) to (h, w, in, out), dense ones are transposed."""
    from torch import nn

    _, keras = _import()
    L = keras.layers
    src = [m for m in torch_model.modules()
           if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    dst = [la for la in model.layers
           if isinstance(la, (L.Conv2D, L.BatchNormalization, L.Dense))]
    def kind(x):
        return ("conv" if isinstance(x, (nn.Conv2d, L.Conv2D)) else
                "bn" if isinstance(x, (nn.BatchNorm2d, L.BatchNormalization)) else "dense")

    if [kind(m) + str(tuple(m.weight.shape)[:1]) for m in src] != \
            [kind(la) + str(tuple(la.get_weights()[0].shape)[-1:]) for la in dst]:
        raise ConfigError("from_torch: the two models have different layer sequences")

    def np_(t):
        return t.detach().cpu().float().numpy()

    for m, la in zip(src, dst):
        if isinstance(m, nn.Conv2d):
            w = [np_(m.weight).transpose(2, 3, 1, 0)]
            la.set_weights(w + ([np_(m.bias)] if m.bias is not None else []))
        elif isinstance(m, nn.BatchNorm2d):
            la.set_weights([np_(m.weight), np_(m.bias), np_(m.running_mean),
                            np_(m.running_var)])
        else:
            la.set_weights([np_(m.weight).T, np_(m.bias)])


def same_weights_check(torch_model, m: ModelConfig, ds: Dataset, batch: int = 1000):
    """Copy ``torch_model``'s weights into a new Keras model of config ``m`` and run
    both on ``ds``'s test set: a one-row DataFrame with the share of images on which
    they predict the same class, the largest logit difference and both accuracies
    (chapter 8)."""
    import pandas as pd
    import torch

    from .data import channel_stats
    from .train import to_input

    km = build_model(m)
    from_torch(km, torch_model)
    torch_model = torch_model.eval().float()
    lt, lk = [], []
    stats = channel_stats(ds.x_train)
    with torch.no_grad():
        for i in range(0, len(ds.y_test), batch):
            x = to_input(ds, ds.x_test[i:i + batch], stats)
            lt.append(torch_model(x).numpy())
            lk.append(np.asarray(km(x.permute(0, 2, 3, 1).numpy(), training=False)))
    lt, lk = np.concatenate(lt), np.concatenate(lk)
    return pd.DataFrame([dict(
        images=len(lt), same_prediction=float(np.mean(lt.argmax(1) == lk.argmax(1))),
        max_abs_logit_diff=float(np.abs(lt - lk).max()),
        torch_acc=float(np.mean(lt.argmax(1) == ds.y_test)),
        keras_acc=float(np.mean(lk.argmax(1) == ds.y_test)))])


def lr_schedule(peak: float, total: int, schedule: str, warmup: float):
    """:func:`lib.train.lr_factor` times ``peak`` as a Keras schedule of the step."""
    tf, keras = _import()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="lib")
    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            s = ops.cast(step, "float32")
            w = float(int(warmup * total))
            t = (s - w) / max(1.0, total - w)
            if schedule == "constant":
                after = ops.ones_like(s)
            elif schedule == "cosine":
                after = 0.5 * (1 + ops.cos(np.pi * t))
            else:
                after = ops.maximum(0.0, 1.0 - t)
            before = (s + 1) / max(w, 1.0)
            return peak * ops.where(s < w, before, after)

        def get_config(self):
            return dict(peak=peak, total=total, schedule=schedule, warmup=warmup)

    return Schedule()


def make_optimizer(c: Config, total_steps: int):
    """SGD (Nesterov) / Adam / AdamW as in :func:`lib.train.make_optimizer`."""
    _, keras = _import()
    lr = lr_schedule(c.lr, total_steps, c.schedule, c.warmup)
    if c.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=c.momentum, nesterov=c.momentum > 0)
    if c.optimizer == "adam":
        return keras.optimizers.Adam(lr, beta_1=c.momentum, beta_2=0.999, epsilon=1e-8)
    opt = keras.optimizers.AdamW(lr, weight_decay=c.weight_decay, beta_1=c.momentum,
                                 beta_2=0.999, epsilon=1e-8)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


# --------------------------------------------------------------------------
# the data pipeline
# --------------------------------------------------------------------------
def pipelines(c: Config, ds: Dataset):
    """``tf.data`` pipelines: (train, eval). Train: shuffle, pad-crop-flip per image
    (uint8, zero padding as in :func:`lib.train.augment_batch`), batch (dropping the
    last partial batch), normalise; eval: batch 1000, normalise."""
    tf, _ = _import()
    mean, std = channel_stats(ds.x_train)
    scale = tf.constant(1 / (255 * std), tf.float32)
    shift = tf.constant(-mean / std, tf.float32)

    def normalise(x, y):
        return tf.cast(x, tf.float32) * scale + shift, y

    def augment(x, y):
        x = tf.pad(x, [[4, 4], [4, 4], [0, 0]])
        x = tf.image.random_crop(x, [32, 32, 3])
        return tf.image.random_flip_left_right(x), y

    auto = tf.data.AUTOTUNE
    train = tf.data.Dataset.from_tensor_slices((ds.x_train, ds.y_train.astype(np.int32)))
    train = train.shuffle(len(ds.y_train), seed=c.seed, reshuffle_each_iteration=True)
    if c.augment:
        train = train.map(augment, num_parallel_calls=auto)
    train = train.batch(c.batch_size, drop_remainder=True).map(normalise).prefetch(auto)
    ev = tf.data.Dataset.from_tensor_slices((ds.x_test, ds.y_test.astype(np.int32)))
    ev = ev.batch(1000).map(normalise).prefetch(auto)
    return train, ev


# --------------------------------------------------------------------------
# training: compile + fit
# --------------------------------------------------------------------------
def fit(c: Config, ds: Dataset, log_dir=None, progress: bool = False) -> Result:
    """Train ``c`` with Keras's ``fit`` on the CPU/GPU TensorFlow sees; the same
    :class:`lib.train.Result` as :func:`lib.train.fit` (``model`` is a Keras model)."""
    tf, keras = _import()
    fingerprint = ds.fingerprint
    ds, ev = prepare_data(c, ds)
    keras.utils.set_random_seed(c.seed)
    amp = resolve_precision(c.precision, _torch_like_device(tf))
    policy = "mixed_bfloat16" if amp is not None else "float32"
    old_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model(c.model, c.weight_decay, seed=c.seed)
    finally:
        keras.config.set_dtype_policy(old_policy)
    n = len(ds.y_train)
    steps = max(1, n // c.batch_size)
    if c.label_smoothing:
        raise ConfigError("lib.keras_cnn: label smoothing needs one-hot labels; not supported")
    # [compile-fit]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=make_optimizer(c, steps * c.epochs), loss=loss,
                  metrics=["accuracy",
                           keras.metrics.SparseCategoricalCrossentropy(from_logits=True,
                                                                       name="ce")])
    train, test = pipelines(c, ds)
    res = Result(model=model)
    stats = _Stats(res, ev)
    callbacks = [stats, keras.callbacks.TerminateOnNaN()]
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(log_dir), histogram_freq=1,
                                                     write_graph=False))
    t_start = time.perf_counter()
    model.fit(train, epochs=c.epochs, validation_data=test, callbacks=callbacks, shuffle=False,
              verbose=1 if progress else 0)
    # [/compile-fit]
    for row in res.history:
        row["time"] -= t_start
    logits = model.predict(test, verbose=0).astype(np.float32)
    y = ds.y_test
    test_loss = float(np.mean(_xent(logits, y)))
    test_acc = float(np.mean(logits.argmax(1) == y))
    res.test_logits = logits
    diverged = not np.isfinite(res.history[-1]["train_loss"]) if res.history else True
    last = res.history[-1]
    res.summary = {
        "status": "diverged" if diverged else "ok", "epochs_run": len(res.history),
        "eval_split": ev, f"{ev}_acc": test_acc, f"{ev}_loss": test_loss,
        "train_acc": last["train_acc"], "train_loss": last["train_loss"],
        f"best_{ev}_acc": max(r[f"{ev}_acc"] for r in res.history),
        "n_params": count_params(model), "train_images": n, f"{ev}_images": len(y),
        "train_time_s": stats.train_time, "eval_time_s": stats.eval_time,
        "images_per_s": len(res.history) * steps * c.batch_size / max(stats.train_time, 1e-9),
        "amp_dtype": "bfloat16" if amp is not None else "float32",
        "data_source": ds.source, "data_fingerprint": fingerprint, "framework": "keras",
        **_hardware(tf), **versions(),
    }
    return res


def _xent(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    return np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]


def _torch_like_device(tf):
    """The torch device naming :func:`lib.train.resolve_precision` expects."""
    import torch

    return torch.device("cuda" if tf.config.list_physical_devices("GPU") else "cpu")


def _hardware(tf) -> dict:
    import torch

    gpus = tf.config.list_physical_devices("GPU")
    h = hardware(torch.device("cpu"))
    h.pop("torch", None)
    h["threads"] = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    if gpus:
        h.update(device="cuda", device_name=gpus[0].name)
    return h


def weight_stats(model) -> list[dict]:
    """Per-kernel statistics with the columns of :func:`lib.train.weight_stats`."""
    return [array_stats(v.path, np.asarray(v.numpy(), dtype=np.float32))
            for v in model.trainable_weights if len(v.shape) > 1]


def _Stats(res: Result, ev: str):
    """A Keras callback that fills ``res.history``/``res.weights`` per epoch with the
    column names of :func:`lib.train.fit` and times training apart from evaluation."""
    _, keras = _import()

    class Stats(keras.callbacks.Callback):
        train_time = eval_time = 0.0

        def on_train_begin(self, logs=None):
            res.weights += [dict(epoch=0, **r) for r in weight_stats(self.model)]

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.t1 = time.perf_counter()
            self.epoch_train_s = self.t1 - self.t0
            self.train_time += self.epoch_train_s

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            now = time.perf_counter()
            if "val_accuracy" in logs:
                self.eval_time += now - self.t1
            else:  # stopped before validation (NaN)
                self.epoch_train_s = now - self.t0
                self.train_time += self.epoch_train_s
            lr = self.model.optimizer.learning_rate
            res.history.append({
                "epoch": epoch + 1, "train_loss": float(logs.get("ce", np.nan)),
                "train_acc": float(logs.get("accuracy", np.nan)),
                f"{ev}_loss": float(logs.get("val_ce", np.nan)),
                f"{ev}_acc": float(logs.get("val_accuracy", np.nan)),
                "lr": float(lr.numpy() if hasattr(lr, "numpy") else lr), "time": now,
                "train_s": self.epoch_train_s})
            res.weights += [dict(epoch=epoch + 1, **r) for r in weight_stats(self.model)]

    return Stats()
