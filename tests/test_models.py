import pytest
import torch

from lib import models
from lib.models import ConfigError


@pytest.mark.parametrize("kw", [dict(), dict(depth=1, width=8), dict(depth=4, kernel_size=5),
                                dict(convs_per_block=2, batch_norm=False, pool="avg"),
                                dict(kind="mlp", hidden=(64,)), dict(growth=1.5, dropout=0.3)])
def test_forward_shapes(kw):
    cfg = models.model_config(**kw)
    m = models.build_model(cfg)
    assert m(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_param_counts():
    cfg = models.model_config(depth=2, width=8, kernel_size=3, batch_norm=False)
    # conv 3->8 (3*3*3*8 + 8), conv 8->16 (3*3*8*16 + 16), linear 16->10 (160 + 10)
    assert models.count_params(models.build_model(cfg)) == 224 + 1168 + 170
    mlp = models.model_config(kind="mlp", hidden=(100,))
    assert models.count_params(models.build_model(mlp)) == 3072 * 100 + 100 + 1010
    assert cfg.widths() == [8, 16]


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match=r"unknown model option\(s\) \['filters'\]; known:"):
        models.model_config(filters=3)


@pytest.mark.parametrize("kw,match", [(dict(kind="rnn"), "kind"), (dict(kernel_size=4), "odd"),
                                      (dict(depth=9), "depth"), (dict(pool="sum"), "pool"),
                                      (dict(dropout=1.0), "dropout")])
def test_impossible_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        models.model_config(**kw)


def test_activations_one_per_conv():
    cfg = models.model_config(depth=3, width=4, convs_per_block=2)
    acts = models.activations(models.build_model(cfg), torch.zeros(1, 3, 32, 32))
    assert [a.shape[2] for a in acts] == [32, 32, 16, 16, 8, 8]


@pytest.mark.parametrize("kw", [dict(), dict(early_pool=True, convs_per_block=2),
                                dict(kernel_size=5, depth=4, growth=1.5),
                                dict(kind="mlp", hidden=(64, 32))])
def test_macs_formula_matches_counted_multiplies(kw):
    """models.macs against multiplies counted by forward hooks on the real layers."""
    import torch
    from torch import nn

    c = models.model_config(**kw)
    m = models.build_model(c).eval()
    total = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            total.append(out[0].numel() * mod.in_channels * mod.kernel_size[0] ** 2)
        else:
            total.append(mod.in_features * mod.out_features)

    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.register_forward_hook(hook)
    m(torch.zeros(1, 3, 32, 32))
    assert models.macs(c) == sum(total)


def test_early_pool_halves_resolution_after_first_conv():
    import torch

    c = models.model_config(depth=2, width=4, convs_per_block=2, early_pool=True)
    m = models.build_model(c)
    sizes = [o.shape[-1] for o in models.activations(m, torch.zeros(1, 3, 32, 32))]
    assert sizes == [16, 16, 8, 8]
