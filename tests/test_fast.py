"""Each fast-training technique of lib.fast on its own (chapter 5's recipe)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib import fast, models, recipe, runs, train
from lib.models import ConfigError


def correlated_images(n=64, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 8, 8, generator=g)
    x = F.interpolate(base, size=32, mode="bilinear", align_corners=False)
    colour = torch.tensor([1.0, 0.8, 0.5]).view(1, 3, 1, 1)
    return x * colour + 0.05 * torch.randn(n, 3, 32, 32, generator=g)


def test_whitening_makes_patch_covariance_identity():
    x = correlated_images()
    p = fast.patches(x)
    corr = torch.corrcoef(p.T)
    assert corr[0, 1] > 0.9  # neighbouring pixels: strongly correlated before
    layer = fast.Whitening(3)
    w = fast.whitening_weights(x, eps=1e-8)
    with torch.no_grad():
        layer.weight.copy_(w)
    out = layer(x)  # 24 channels: +v and -v
    assert out.shape == (64, 24, 31, 31)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = half.T @ half / len(half)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.equal(out[:, 12:], -out[:, :12])
    assert not layer.weight.requires_grad and layer.bias.requires_grad


def test_init_whitening_sets_the_layer_in_a_model():
    m = models.build_model(models.model_config(whiten=True, depth=2, width=4))
    assert fast.init_whitening(m, correlated_images(8))
    first = m.features[0]
    assert isinstance(first, fast.Whitening) and first.weight.abs().sum() > 0
    assert not fast.init_whitening(models.build_model(models.model_config()), torch.zeros(1))


def test_dirac_init_is_an_identity_map():
    conv = fast.dirac_init_(torch.nn.Conv2d(5, 8, 3, padding=1, bias=False))
    x = torch.randn(2, 5, 9, 9)
    y = conv(x)
    assert torch.allclose(y[:, :5], x, atol=1e-6)
    assert not torch.allclose(y[:, 5:], torch.zeros_like(y[:, 5:]))  # new channels stay random


def test_lookahead_follows_its_formula():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    la = fast.Lookahead(m)
    with torch.no_grad():
        m.weight.fill_(3.0)
    la.update(m, 0.75)  # ema = 0.75 * 1 + 0.25 * 3 = 1.5, and the model takes it
    assert torch.allclose(m.weight, torch.full((1, 2), 1.5))
    with torch.no_grad():
        m.weight.fill_(5.5)
    la.update(m, 1.0)  # decay 1: the model is reset to the average
    assert torch.allclose(m.weight, torch.full((1, 2), 1.5))
    assert fast.lookahead_decay(0, 100, 0.8) == 0
    assert fast.lookahead_decay(50, 100, 0.8) == pytest.approx(0.1)
    assert fast.lookahead_decay(100, 100, 0.8) == pytest.approx(0.8)


class Recorder(torch.nn.Module):
    """A model that returns the view it was given (flattened) so TTA can be checked."""

    def forward(self, x):
        return x.flatten(1)


def test_tta_averages_the_intended_views():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(fast.tta_logits(Recorder(), x, 0), x.flatten(1))
    mirror = fast.tta_logits(Recorder(), x, 1)
    assert torch.allclose(mirror, (x + x.flip(3)).flatten(1) / 2)
    views = fast.tta_views(x, 2)
    assert len(views) == 6 and math.isclose(sum(a for a, _ in views), 1.0)
    xp = F.pad(x, (1,) * 4, mode="reflect")
    up_left, down_right = xp[:, :, :4, :4], xp[:, :, 2:, 2:]
    want = (0.25 * (x + x.flip(3)) + 0.125 * (up_left + up_left.flip(3))
            + 0.125 * (down_right + down_right.flip(3))).flatten(1)
    assert torch.allclose(fast.tta_logits(Recorder(), x, 2), want)
    with pytest.raises(ValueError, match="TTA level"):
        fast.tta_views(x, 3)


def test_decoupled_and_coupled_parametrisation_give_the_same_sgd_step():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    lr, mom, wd, bs = 11.5, 0.85, 0.0153, 32
    torch_lr, torch_wd = fast.decoupled_to_torch(lr, mom, wd, bs)
    assert torch_lr == pytest.approx(lr / (1024 * (1 + 1 / (1 - mom))))

    def steps(loss_reduction, lr_, wd_):
        torch.manual_seed(1)
        m = torch.nn.Linear(6, 3)
        opt = torch.optim.SGD(m.parameters(), lr=lr_, momentum=mom, nesterov=True,
                              weight_decay=wd_)
        for _ in range(3):
            loss = F.cross_entropy(m(x), y, reduction=loss_reduction)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return m.weight.detach().clone()

    # the same step written in PyTorch's coupled form: mean loss, lr * batch size
    decoupled = steps("sum", torch_lr, torch_wd)
    coupled = steps("mean", torch_lr * bs, torch_wd / bs)
    assert torch.allclose(decoupled, coupled, atol=1e-6)


def test_decoupled_optimizer_groups():
    c = recipe.fast_config("smoke")
    m = models.build_model(c.model)
    opt = train.make_optimizer(c, m)
    bn, other = opt.param_groups
    assert bn["lr"] == pytest.approx(other["lr"] * c.bias_lr_scale)
    # the same decay per step for both groups: lr * weight_decay
    assert bn["lr"] * bn["weight_decay"] == pytest.approx(other["lr"] * other["weight_decay"])
    frozen = [p for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)
              for p in [mod.weight]]
    assert all(not p.requires_grad for p in frozen)
    assert not any(p is q for g in opt.param_groups for p in g["params"] for q in frozen)


def test_alternating_flip_flips_every_image_every_other_epoch():
    g = torch.Generator().manual_seed(0)
    m1, base = fast.flip_mask(100, 1, None, g, "alternating")
    m2, base2 = fast.flip_mask(100, 2, base, g, "alternating")
    m3, _ = fast.flip_mask(100, 3, base2, g, "alternating")
    assert torch.equal(m2, ~m1) and torch.equal(m3, m1)
    assert 30 < int(m1.sum()) < 70
    r, _ = fast.flip_mask(100, 2, None, g, "random")
    assert not torch.equal(r, ~m1)
    assert not fast.flip_mask(10, 1, None, g, "none")[0].any()


def test_shift_crop_reflect_and_zero_padding():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    same = fast.shift_crop(x, torch.tensor([1]), torch.tensor([1]), 1, "reflect")
    assert torch.equal(same, x)  # offset = pad: no shift
    up = fast.shift_crop(x, torch.tensor([0]), torch.tensor([1]), 1, "reflect")
    assert torch.equal(up[0, 0, 0], x[0, 0, 1]) and torch.equal(up[0, 0, 1:], x[0, 0, :3])
    zeros = fast.shift_crop(x, torch.tensor([0]), torch.tensor([1]), 1, "zeros")
    assert torch.equal(zeros[0, 0, 0], torch.zeros(4))


def test_triangle_schedule():
    assert train.lr_factor(0, 100, "triangle", 0.2) == pytest.approx(0.2)
    assert train.lr_factor(20, 100, "triangle", 0.2) == pytest.approx(1.0)
    assert train.lr_factor(100, 100, "triangle", 0.2) == pytest.approx(0.07)


def test_fast_recipe_trains_and_keeps_tta_logits(synth, tmp_path):
    c = recipe.fast_config("smoke", precision="fp32", n_train=None, n_test=None)
    run = runs.get(c, synth, "recipe", tmp_path, device="cpu", progress=False)
    s = run.summary
    assert s["status"] == "ok" and 0 <= s["test_acc_tta"] <= 1
    plain = np.load(run.path / "test_logits.npy").astype(np.float32)
    tta = np.load(run.path / "test_logits_tta.npy").astype(np.float32)
    y = synth.y_test
    assert (plain.argmax(1) == y).mean() == pytest.approx(s["test_acc"], abs=1e-3)
    assert (tta.argmax(1) == y).mean() == pytest.approx(s["test_acc_tta"], abs=1e-3)
    # the CPU's precision-relevant flags are recorded with the run
    from lib.train import CPU_FLAGS, cpu_flags
    assert s["cpu_flags"] == cpu_flags()
    assert s["cpu_flags"] == "unknown" or set(s["cpu_flags"].split()) <= set(CPU_FLAGS)
    # the whitening bias stopped training after whiten_bias_epochs
    model = run.model()
    assert isinstance(model.features[0], fast.Whitening)


def test_whitening_bias_freezes_after_its_epochs(synth):
    c = recipe.fast_config("smoke", precision="fp32", whiten_bias_epochs=0, epochs=1,
                           n_train=None, n_test=None, lookahead_every=0)
    res = train.fit(c, synth, device="cpu", progress=False)
    assert torch.count_nonzero(res.model.features[0].bias) == 0  # never trained
    c1 = train.make_config(c, whiten_bias_epochs=1)
    res1 = train.fit(c1, synth, device="cpu", progress=False)
    assert torch.count_nonzero(res1.model.features[0].bias) > 0


def test_new_options_keep_old_keys():
    c = train.make_config(model=dict(depth=2, width=8))
    d = train.config_dict(c)
    for name in train.KEY_NEUTRAL_DEFAULTS:
        *parents, leaf = name.split(".")
        sub = d
        for p in parents:
            sub = sub[p]
        assert sub[leaf] == train.KEY_NEUTRAL_DEFAULTS[name], name
    assert runs.run_key(c, "fp") != runs.run_key(train.make_config(c, tta=1), "fp")


@pytest.mark.parametrize("over, match", [
    (dict(tta=3), "tta=3 is invalid"),
    (dict(lookahead_every=5, lookahead_decay=0.0), "lookahead_decay"),
    (dict(lookahead_every=-1), "lookahead_every"),
    (dict(whiten_bias_epochs=3, model=dict(whiten=False)), "whiten_bias_epochs"),
    (dict(parametrisation="decoupled", optimizer="adam"), "parametrisation"),
    (dict(pad_mode="wrap"), "pad_mode"),
    (dict(flip="sometimes"), "flip"),
    (dict(translate=40), "translate"),
    (dict(model=dict(block_widths=(8, 8))), "block_widths"),
    (dict(model=dict(whiten=True, depth=5)), "depth"),
    (dict(model=dict(global_pool="median")), "global_pool"),
    (dict(model=dict(kind="mlp", whiten=True)), "whiten"),
])
def test_impossible_recipe_options_fail_at_config_time(over, match):
    with pytest.raises(ConfigError, match=match):
        train.make_config(**over)


def test_ablation_table_times_a_run_at_its_fastest_epochs_pace():
    from types import SimpleNamespace

    import pandas as pd

    def run(seed, accs, train_s):
        m = pd.DataFrame({"epoch": range(1, len(accs) + 1), "val_acc": accs,
                          "train_s": train_s})
        return SimpleNamespace(summary=dict(test_acc=accs[-1], test_acc_tta=accs[-1] + .01,
                                            train_time_s=float(sum(train_s))), metrics=m,
                               key=f"k{seed}", config=SimpleNamespace(seed=seed, holdout=100))

    rows = [dict(kind="ladder", step=0, name="a", seed=0,
                 run=run(0, [0.5, 0.86, 0.91], [30.0, 40.0, 50.0])),
            dict(kind="ladder", step=0, name="a", seed=1,
                 run=run(1, [0.6, 0.84, 0.88], [90.0, 25.0, 100.0])),  # a disturbed run
            dict(kind="ladder", step=1, name="b", seed=0, run=None)]
    t = recipe.ablation_table(rows)
    assert len(t) == 1 and t.seeds.iloc[0] == 2 and t["keys"].iloc[0] == ("k0", "k1")
    assert t.test_acc.iloc[0] == pytest.approx((0.91 + 0.88) / 2)
    assert t.minutes.iloc[0] == pytest.approx(25.0 * 3 / 60)  # seed 1's fastest epoch x 3
    assert recipe.run_row(rows[0]["run"])["minutes"] == pytest.approx(2.0)  # as recorded


def test_contributions_read_both_scores_and_count_a_step_shown_twice_once():
    import pandas as pd

    n = len(recipe.LADDER)
    tta = [0.81 + 0.01 * i for i in range(n - 1)] + [0.81 + 0.01 * (n - 2) + 0.002]
    test = [0.80 + 0.01 * i for i in range(n - 1)] + [0.80 + 0.01 * (n - 2) + 0.01]
    ab = pd.DataFrame(dict(  # leave-one-out "no last": the ladder's step before the last
        kind=["ladder"] * n + ["leave one out"], step=list(range(n)) + [0],
        name=[f"t{i}" for i in range(n)] + ["no last"], seeds=2,
        test_acc=test + [test[-2]], tta_acc=tta + [tta[-2]],
        test_acc_sd=0.002, tta_acc_sd=0.002,
        keys=[(f"a{i}", f"b{i}") for i in range(n)] + [(f"a{n - 2}", f"b{n - 2}")]))
    assert recipe.seed_noise(ab)["df"] == n  # the leave-one-out row is a ladder step's runs
    text = recipe.contributions(ab)
    assert "t1 +1.00 with TTA, +1.00 plain (2 seeds)" in text
    assert "ablations' full recipe" in text and "with TTA and" in text
    # the last step buys 1 point plain (beyond chance) and 0.2 with TTA (within it),
    # said once though two rows show it
    one = text.split("on one of the two scores only: ")[1].split(". ")[0]
    assert one == f"t{n - 1} (+0.20 with TTA, +1.00 plain)"


def test_jpeg_trend_is_numpys_line_with_a_t_interval():
    import pandas as pd

    t = pd.DataFrame(dict(change=[0.0, 0.0, 5.0, 5.0, 10.0, 10.0],
                          test_acc=[0.90, 0.92, 0.85, 0.87, 0.80, 0.82]))
    f = recipe.jpeg_trend(t, "test_acc", at=-5.0)
    assert f["slope"] == pytest.approx(-0.01) and f["value"] == pytest.approx(0.96)
    assert f["lo"] < 0.96 < f["hi"] and f["n"] == 6
    # the interval widens with the distance from the data
    assert recipe.jpeg_trend(t, "test_acc", at=-20.0)["hi"] - 1.11 > f["hi"] - 0.96
    assert np.isnan(recipe.jpeg_trend(t.iloc[:2], "test_acc")["value"])  # one change only
    # the group means lie on the line: nothing lacks fit; bend the last one and it does
    assert f["lof_f"] == pytest.approx(0.0, abs=1e-9) and f["lof_df"] == (1, 3)
    bent = recipe.jpeg_trend(t.assign(test_acc=t.test_acc - [0, 0, 0, 0, .2, .2]),
                             "test_acc")
    assert bent["lof_p"] < 0.01


def test_jpeg_first_step_carries_the_first_slope_with_a_pooled_interval():
    import pandas as pd
    from scipy import stats as st

    t = pd.DataFrame(dict(change=[0.0, 0.0, 5.0, 5.0, 10.0, 10.0],
                          test_acc=[0.90, 0.92, 0.85, 0.87, 0.70, 0.74]))
    f = recipe.jpeg_first_step(t, "test_acc", at=-10.0)
    assert f["value"] == pytest.approx(0.10)  # 0.05 over 5 levels, carried 10 levels
    sd = np.sqrt((0.0002 + 0.0002 + 0.0008) / 3)  # pooled over the three changes
    half = st.t.ppf(0.975, 3) * sd * np.sqrt(1 / 2 + 1 / 2) * 2
    assert f["df"] == 3 and f["hi"] - f["value"] == pytest.approx(half)


def test_seed_noise_pools_the_steps_variances():
    import pandas as pd
    from scipy import stats as st

    ab = pd.DataFrame(dict(seeds=[2, 2, 3, 1], tta_acc_sd=[0.001, 0.003, 0.002, np.nan],
                           tta_acc=[0.88, 0.89, 0.87, 0.86]))
    n = recipe.seed_noise(ab)
    assert n["df"] == 1 + 1 + 2  # the one-seed step adds nothing
    sd = np.sqrt((0.001**2 + 0.003**2 + 2 * 0.002**2) / 4)
    assert n["sd"] == pytest.approx(sd)
    assert n["half"] == pytest.approx(st.t.ppf(0.975, 4) * sd * np.sqrt(2 / 2))
