import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib import filters, models


@pytest.mark.parametrize("k,stride,padding", [(1, 1, 0), (3, 1, 0), (3, 1, 1), (5, 2, 2),
                                              (4, 3, 1), (7, 2, 0)])
def test_conv_by_hand_matches_torch(k, stride, padding):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.normal(size=(3, 13, 11)).astype(np.float32)
    w = rng.normal(size=(4, 3, k, k)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    mine = filters.conv2d(x, w, b, stride=stride, padding=padding)
    ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(b),
                   stride=stride, padding=padding)[0].numpy()
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, atol=1e-4, rtol=1e-5)


def test_conv_is_cross_correlation_not_flipped():
    x = np.zeros((1, 3, 3), np.float32)
    x[0, 0, 0] = 1.0  # a single bright pixel at the top left
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    assert filters.conv2d(x, w)[0, 0, 0] == w[0, 0, 0, 0]


def test_conv_shape_errors():
    with pytest.raises(ValueError, match="shapes"):
        filters.conv2d(np.zeros((2, 5, 5)), np.zeros((1, 3, 3, 3)))


@pytest.mark.parametrize("n,k,s,p", [(32, 3, 1, 1), (32, 5, 2, 2), (31, 7, 3, 0), (8, 3, 2, 0)])
def test_output_size_matches_torch(n, k, s, p):
    got = F.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, k, k), stride=s, padding=p)
    assert filters.output_size(n, k, s, p) == got.shape[-1]


def test_filter_structure():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(64, 3, 5, 5))
    ramp = np.broadcast_to(np.linspace(-1, 1, 5), (2, 3, 5, 5)).copy()
    ramp[1, 2] *= -1  # blue channel reversed: a colour contrast
    s_noise, s_ramp = filters.filter_structure(noise), filters.filter_structure(ramp)
    assert abs(s_noise.neighbour_corr.mean()) < 0.1 and abs(s_noise.channel_corr.mean()) < 0.1
    assert s_ramp.channel_corr[0] == pytest.approx(1.0)
    assert s_ramp.channel_corr[1] == pytest.approx(-1 / 3)
    assert s_ramp.neighbour_corr[0] > 0.4
    assert s_ramp.norm[0] == pytest.approx(np.linalg.norm(ramp[0]))


@pytest.mark.parametrize("kernel,convs,early", [(3, 1, False), (5, 1, False), (3, 2, False),
                                                (5, 2, True)])
def test_receptive_field_formula_matches_autograd(kernel, convs, early):
    cfg = models.model_config(depth=3, width=4, kernel_size=kernel, convs_per_block=convs,
                              early_pool=early)
    formula = [r["receptive_field"] for r in models.receptive_fields(cfg)]
    assert formula == models.measured_receptive_fields(cfg)


def test_classic_kernels_behave():
    img = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))  # a horizontal ramp
    inner = (slice(2, -2), slice(2, -2))
    assert np.allclose(filters.apply_kernel(img, filters.KERNELS["laplacian"])[inner], 0, atol=1e-6)
    assert np.allclose(filters.apply_kernel(img, filters.KERNELS["sobel y"])[inner], 0, atol=1e-6)
    assert (filters.apply_kernel(img, filters.KERNELS["sobel x"])[inner] > 0).all()
    assert np.allclose(filters.apply_kernel(img, filters.KERNELS["identity"]), img)
