"""SeparableMaxPool2d equals nn.MaxPool2d exactly, ExactAvgPool2d equals nn.AvgPool2d exactly, on the
engine path (float32 contiguous, no gradient) and on the torch fallback (other dtypes, gradients,
non-contiguous / channels_last inputs); both refuse options they cannot reproduce."""
import pytest
import torch
import torch.nn as nn

from onebit.deploy import engine
from onebit.deploy.pool import ExactAvgPool2d, SeparableMaxPool2d, avg_supported, separable_supported

POOL_CASES = [(3, 2, 1, 112, 112), (2, 2, 0, 7, 9), (3, 1, 1, 5, 6), (3, 3, 0, 10, 11),
              ((2, 3), (1, 2), (1, 1), 8, 7), (3, None, 0, 9, 9), (1, 1, 0, 3, 4)]

# the same input through each path: the engine (float32 contiguous, no grad) and the torch fallback
# (float64; requires_grad; channels_last, which is not contiguous in the default format; a strided view)
VARIANTS = {
    "engine": lambda x: x,
    "float64": lambda x: x.double(),
    "requires_grad": lambda x: x.clone().requires_grad_(),
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided_view": lambda x: torch.cat([x, x], dim=3)[..., ::2],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("k,s,p,h,w", POOL_CASES)
def test_separable_max_pool_is_exact(k, s, p, h, w, variant, count_calls):
    torch.manual_seed(0)
    pool = nn.MaxPool2d(k, s, p)
    x = torch.randn(2, 5, h, w)
    x[0, 0, 0, :3] = float("-inf")  # -inf inputs next to the -inf padding
    x[1, 1] = 0.0  # ties (and -0.0 vs 0.0 are equal under max)
    x = VARIANTS[variant](x)
    if variant in ("channels_last", "strided_view") and min(h, w) > 1:
        assert not x.is_contiguous()  # so the engine path is really skipped
    calls = count_calls(engine._C, "maxpool2d")
    got, want = SeparableMaxPool2d.from_pool(pool)(x), pool(x)
    assert len(calls) == (variant == "engine")  # the engine runs for the engine variant only
    assert got.dtype == want.dtype and got.requires_grad == want.requires_grad
    assert torch.equal(got.detach(), want.detach())


@pytest.mark.parametrize("k,s,p,h,w", POOL_CASES)
def test_separable_max_pool_gradient_is_exact(k, s, p, h, w):
    """Backward through the torch fallback routes each output's gradient to its window's maximum, as
    nn.MaxPool2d does.  Tie-free input (a subgradient choice at ties is not specified: torch.maximum
    splits it, the max pool gives it to one element); integer upstream gradients in float64 so that the
    sums over overlapping windows are exact in any order."""
    torch.manual_seed(1)
    pool = nn.MaxPool2d(k, s, p)
    x = torch.randperm(2 * 5 * h * w, dtype=torch.float64).reshape(2, 5, h, w)  # distinct values: no ties
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = SeparableMaxPool2d.from_pool(pool)(xa), pool(xb)
    g = torch.randint(-8, 9, yb.shape, dtype=torch.float64)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(xa.grad, xb.grad)
    assert xa.grad.sum() == g.sum()  # every output's gradient lands on exactly one input


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("k,s,h,w", [(2, 2, 8, 8), (2, 2, 7, 9), (3, 2, 9, 10), ((2, 3), (1, 2), 6, 7),
                                     (3, None, 9, 9), (1, 1, 3, 4)])
def test_exact_avg_pool_is_exact(k, s, h, w, variant, count_calls):
    torch.manual_seed(0)
    pool = nn.AvgPool2d(k, s)
    x = VARIANTS[variant](torch.randn(2, 5, h, w))
    calls = count_calls(engine._C, "avgpool2d")
    got, want = ExactAvgPool2d.from_pool(pool)(x), pool(x)
    assert len(calls) == (variant == "engine")  # the engine runs for the engine variant only
    assert got.dtype == want.dtype and got.requires_grad == want.requires_grad
    assert torch.equal(got.detach(), want.detach())
    if variant == "requires_grad":
        g = torch.randn_like(want)
        ga, = torch.autograd.grad(got, x, g)
        gb, = torch.autograd.grad(want, x, g)
        assert torch.equal(ga, gb)


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2, 2, padding=1), nn.AvgPool2d(2, 2, ceil_mode=True),
                                  nn.AvgPool2d(2, 2, divisor_override=3)])
def test_exact_avg_pool_refuses_other_options(pool):
    assert not avg_supported(pool)
    with pytest.raises(ValueError, match="keep nn.AvgPool2d"):
        ExactAvgPool2d.from_pool(pool)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, 1, dilation=2), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.MaxPool2d(3, 2, return_indices=True)])
def test_separable_max_pool_refuses_other_options(pool):
    assert not separable_supported(pool)
    with pytest.raises(ValueError, match="keep nn.MaxPool2d"):
        SeparableMaxPool2d.from_pool(pool)
