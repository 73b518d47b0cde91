"""SeparableMaxPool2d equals nn.MaxPool2d exactly, and refuses options it cannot reproduce."""
import pytest
import torch
import torch.nn as nn

from onebit.deploy.pool import SeparableMaxPool2d, separable_supported


@pytest.mark.parametrize("k,s,p,h,w", [(3, 2, 1, 112, 112), (2, 2, 0, 7, 9), (3, 1, 1, 5, 6), (3, 3, 0, 10, 11),
                                       ((2, 3), (1, 2), (1, 1), 8, 7), (3, None, 0, 9, 9), (1, 1, 0, 3, 4)])
def test_separable_max_pool_is_exact(k, s, p, h, w):
    torch.manual_seed(0)
    pool = nn.MaxPool2d(k, s, p)
    x = torch.randn(2, 5, h, w)
    x[0, 0, 0, :3] = float("-inf")  # -inf inputs next to the -inf padding
    x[1, 1] = 0.0  # ties (and -0.0 vs 0.0 are equal under max)
    assert torch.equal(SeparableMaxPool2d.from_pool(pool)(x), pool(x))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, 1, dilation=2), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.MaxPool2d(3, 2, return_indices=True)])
def test_separable_max_pool_refuses_other_options(pool):
    assert not separable_supported(pool)
    with pytest.raises(ValueError, match="keep nn.MaxPool2d"):
        SeparableMaxPool2d.from_pool(pool)
