"""The fast recipe's configurations (chapter 5, "What each technique buys").

Definitions only: the techniques themselves live in :mod:`lib.fast`, the loop in
:mod:`lib.train`. :func:`fast_config` is airbench94's network and training recipe
(Jordan 2024, arXiv:2404.00498), with this book's names for each knob.
"""

from __future__ import annotations

from .train import Config, make_config

#: airbench94's network: a frozen 2x2 whitening conv, three groups of two 3x3 convs
#: (pooling after the first), batch norm with frozen scales and fast statistics (airbench's
#: momentum 0.6 is 0.4 in PyTorch's convention: the weight of the new batch), GELU,
#: a global max pool and logits scaled by 1/9.
FAST_MODEL = dict(
    kind="cnn", depth=3, block_widths=(64, 256, 256), kernel_size=3, convs_per_block=2,
    early_pool=True, batch_norm=True, pool="max", activation="gelu", whiten=True,
    dirac_init=True, bn_frozen_scale=True, bn_momentum=0.4, global_pool="max",
    head_scale=1 / 9,
)

#: airbench94's training recipe, in the decoupled parametrisation (per 1,024 examples).
FAST_TRAIN = dict(
    epochs=10, batch_size=1024, optimizer="sgd", parametrisation="decoupled", lr=11.5,
    momentum=0.85, weight_decay=0.0153, bias_lr_scale=64.0, label_smoothing=0.2,
    whiten_bias_epochs=3, schedule="triangle", warmup=0.23, lookahead_every=5,
    lookahead_decay=0.95**5, augment=True, translate=2, pad_mode="reflect",
    flip="alternating", tta=2,
)

#: Epochs and widths of the recipe per budget: smoke is seconds on synthetic data.
RECIPE_BUDGETS = {
    "smoke": dict(epochs=2, batch_size=64, n_train=512, n_test=256,
                  model=dict(block_widths=(8, 16, 16))),
    "cpu": {},
    "gpu": {},
}


def fast_config(budget: str = "cpu", seed: int = 0, **overrides) -> Config:
    """The full recipe (the ``fast`` preset of ``python -m lib train``)."""
    from .models import ConfigError

    if budget not in RECIPE_BUDGETS:
        raise ConfigError(f"budget {budget!r}: use one of {sorted(RECIPE_BUDGETS)}")
    b = dict(RECIPE_BUDGETS[budget])
    model = {**FAST_MODEL, **b.pop("model", {}), **overrides.pop("model", {})}
    return make_config(Config(), model=model, seed=seed, **{**FAST_TRAIN, **b, **overrides})


# --------------------------------------------------------------------------
# the chapter's ablations: add one technique at a time, and leave one out
# --------------------------------------------------------------------------
#: The ladder's network width: airbench's narrower variant (64/128/128, published at
#: 93 % in about 11 epochs), so that both ablations fit about 6 CPU hours.
LADDER_WIDTHS = (64, 128, 128)
#: The ladder's fidelity: the recipe's 10 epochs on 45,000 images; 5,000 held out to
#: tell when a run first reaches 90 % (and 93 %), the test set scored once at the end.
LADDER_BUDGETS = {
    "smoke": dict(epochs=2, holdout=64, batch_size=64, n_train=None),
    "cpu": dict(epochs=10, holdout=5_000),
    "gpu": dict(epochs=10, holdout=5_000),
}
LADDER_SEEDS = {"smoke": 1, "cpu": 2, "gpu": 5}
RECIPE_SEEDS = {"smoke": 1, "cpu": 3, "gpu": 5}

#: Each step adds what it names to the step before (chapter 3's CNN and recipe first).
LADDER = [
    ("chapter 3's CNN and recipe", {}),
    ("airbench's layout", dict(model=dict(
        depth=3, block_widths=LADDER_WIDTHS, convs_per_block=2, early_pool=True,
        activation="gelu", global_pool="max"))),
    ("whitening layer", dict(model=dict(whiten=True), whiten_bias_epochs=3)),
    ("Dirac init", dict(model=dict(dirac_init=True))),
    ("frozen BN scales, fast BN statistics", dict(model=dict(bn_frozen_scale=True,
                                                            bn_momentum=0.4))),
    ("airbench's optimiser", dict(
        batch_size=1024, parametrisation="decoupled", lr=11.5, momentum=0.85,
        weight_decay=0.0153, bias_lr_scale=64.0, schedule="triangle", warmup=0.23,
        label_smoothing=0.2, model=dict(head_scale=1 / 9))),
    ("translate 2 (reflect), alternating flip", dict(translate=2, pad_mode="reflect",
                                                     flip="alternating")),
    ("lookahead (EMA)", dict(lookahead_every=5)),
]

#: What each leave-one-out run puts back to the ladder's first value.
LEAVE_ONE_OUT = [
    ("no whitening layer", dict(model=dict(whiten=False), whiten_bias_epochs=None)),
    ("no Dirac init", dict(model=dict(dirac_init=False))),
    ("no BN tweaks", dict(model=dict(bn_frozen_scale=False, bn_momentum=0.1))),
    ("no BN-bias learning-rate scale", dict(bias_lr_scale=1.0)),
    ("no label smoothing", dict(label_smoothing=0.0)),
    ("random flip", dict(flip="random")),
    ("crop 4 (zero padding)", dict(translate=4, pad_mode="zeros")),
    ("no lookahead", dict(lookahead_every=0)),
    ("ReLU", dict(model=dict(activation="relu"))),
]


def _merge(base: dict, over: dict) -> dict:
    out = {**base, **{k: v for k, v in over.items() if k != "model"}}
    out["model"] = {**base.get("model", {}), **over.get("model", {})}
    return out


def ladder_configs(budget: str = "cpu", seed: int = 0) -> list[tuple[str, Config]]:
    """(name, config) of every ladder step, each adding one technique (chapter 5)."""
    from .book import ch03_cnn_config
    from .train import config_dict

    start = config_dict(make_config(ch03_cnn_config("cpu", seed), tta=2, final_test=True,
                                    **LADDER_BUDGETS[budget]))
    if budget == "smoke":
        start["model"]["width"] = 8
    out, cur = [], start
    for name, over in LADDER:
        if budget == "smoke" and "block_widths" in over.get("model", {}):
            over = _merge(over, dict(model=dict(block_widths=(8, 16, 16))))
        cur = _merge(cur, over)
        out.append((name, make_config(Config(), **cur)))
    return out


def leave_one_out_configs(budget: str = "cpu", seed: int = 0) -> list[tuple[str, Config]]:
    """(name, config): the ladder's last step with one technique taken out (chapter 5)."""
    from .train import config_dict

    full = config_dict(ladder_configs(budget, seed)[-1][1])
    return [(name, make_config(Config(), **_merge(full, over)))
            for name, over in LEAVE_ONE_OUT]


def recipe_configs(budget: str = "cpu") -> list[Config]:
    """The full recipe at full fidelity, one config per seed (chapter 5)."""
    return [fast_config(budget, seed=s) for s in range(RECIPE_SEEDS[budget])]


def plan(budget: str = "cpu") -> list[tuple[str, str, Config]]:
    """Every run of the recipe chapter as (group, name, config), in the order
    ``python -m lib recipe`` trains them: the full recipe's seeds, then the first seed
    of both ablations, then the other seeds."""
    out = [("recipe", f"full recipe, seed {c.seed}", c) for c in recipe_configs(budget)]
    for s in range(LADDER_SEEDS[budget]):
        both = ladder_configs(budget, s) + leave_one_out_configs(budget, s)
        out += [("recipe-ablation", f"{n}, seed {s}", c) for n, c in both]
    return out
