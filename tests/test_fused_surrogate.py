"""The engine's one-pass surrogate gradients against torch's ops and a float64 closed form."""
import math

import pytest
import torch

import onebit
from onebit import _engine as C
from onebit.binarize import fused
from onebit.binarize.sign import approx_sign_torch, reste_grad, reste_grad_torch

PATHS = C.available_paths()
needs_engine = pytest.mark.skipif(not fused.engine_enabled(), reason="no AVX2 on this CPU: torch's ops run")

# exact region boundaries (in float32), zeros, tiny and huge values, subnormals
SPECIAL = [0.0, -0.0, 0.1, -0.1, 1.5, -1.5, math.nextafter(0.1, 1), math.nextafter(1.5, 2), 1e-30, 1e-42,
           -1e-42, 3e38, -3e38, float("inf"), float("-inf"), 0.25, 1.0, -1.0, 2.0 ** -20, 1.4999]


def data(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 1.2
    x[: len(SPECIAL)] = torch.tensor(SPECIAL)
    return x, torch.randn(n, generator=gen)


def engine(kind, x, g, path="auto", threads=2, **kw):
    return torch.from_numpy(C.surrogate_grad(kind, x.numpy(), g.numpy(), path=path, num_threads=threads, **kw))


def reste_f64(x, g, o, t=1.5, m=0.1):
    """ReSTE's surrogate in float64 with the float32 region bounds the kernel compares against."""
    a = x.double().abs()
    m32, t32 = torch.tensor(m, dtype=torch.float32).double(), torch.tensor(t, dtype=torch.float32).double()
    s = (1.0 / o) * a.clamp(min=m32.item()) ** ((1.0 - o) / o)
    s = torch.where(a <= m32, m ** (1.0 / o) / m, s)
    s = torch.where(a > t32, torch.zeros_like(s), s)
    return s * g.double()


@pytest.mark.parametrize("n", [1, 15, 17, 4099, 70001])  # vector tails and several 32768-element tasks
@pytest.mark.parametrize("o", [1.0, 1.37, 2.0, 3.0])
def test_reste_kernel_against_closed_form_and_torch(n, o):
    x, g = data(max(n, len(SPECIAL)))
    x, g = x[:n].contiguous(), g[:n].contiguous()
    out = engine("reste", x, g, o=o)
    ref64 = reste_f64(x, g, o)
    # within 1e-6 relative of the exact value (powf itself is about 1e-7)
    assert torch.allclose(out.double(), ref64, rtol=1e-6, atol=0)
    # and of torch's float32 ops, exactly where no power is taken (flat zone, beyond t)
    ref = reste_grad_torch(o)(x, g)
    assert torch.allclose(out, ref, rtol=1e-6, atol=0)
    a = x.abs()
    still = (a <= 0.1) | (a > 1.5)
    assert torch.equal(out[still], ref[still])


@pytest.mark.parametrize("kind", ["reste", "approx_sign"])
def test_every_path_gives_the_same_bits(kind):
    x, g = data(50003, seed=1)
    outs = [engine(kind, x, g, path=p, threads=t, o=2.3) for p in PATHS for t in (1, 3)]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_approx_sign_kernel_equals_torch_bit_for_bit():
    x, g = data(10007, seed=2)
    assert torch.equal(engine("approx_sign", x, g), approx_sign_torch(x, g))


@pytest.mark.parametrize("kind", ["reste", "approx_sign"])
def test_nan_propagates(kind):
    x = torch.tensor([float("nan"), 0.5, float("nan")] * 7)
    g = torch.ones_like(x)
    for p in PATHS:
        out = engine(kind, x, g, path=p, o=2.0)
        assert torch.equal(torch.isnan(out), torch.isnan(x))


def test_bad_arguments_raise():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="unknown kind 'ste'"):
        engine("ste", x, x)
    with pytest.raises(ValueError, match="same shape"):
        engine("reste", x, torch.zeros(5))
    with pytest.raises(ValueError, match="o must be in"):
        engine("reste", x, x, o=0.5)
    with pytest.raises(ValueError, match="m < t"):
        engine("reste", x, x, o=2.0, m=0.5, t=0.2)


@needs_engine
@pytest.mark.parametrize("name,kw", [("reste", {"o": 2.2}), ("approx_sign", {})])
def test_binarizer_backward_uses_the_engine_and_matches_torch(name, kw, count_calls):
    b = onebit.binarize.get(name, **kw)
    x, g = data(3 * 5 * 7 * 11, seed=3)
    own = engine(name, x, g, **kw).view(3, 5, 7, 11)  # the engine's own output for this x and g
    x = x.view(3, 5, 7, 11).requires_grad_(True)
    calls = count_calls(fused._C, "surrogate_grad")
    b(x).backward(g.view(3, 5, 7, 11))
    assert calls == [name]  # the float32 backward ran on the engine, once
    fast = x.grad.clone()
    assert torch.equal(fast, own)  # bit for bit
    x.grad = None
    fused.use_engine(False)
    try:
        b(x).backward(g.view(3, 5, 7, 11))
    finally:
        fused.use_engine(True)
    assert len(calls) == 1  # use_engine(False): torch's ops
    assert torch.allclose(fast, x.grad, rtol=1e-6, atol=0)
    if name == "approx_sign":
        assert torch.equal(fast, x.grad)
    x64 = x.detach().double().requires_grad_(True)
    b(x64).backward(g.double().view(3, 5, 7, 11))
    assert len(calls) == 1  # float64: torch's ops


@needs_engine
def test_non_contiguous_and_other_dtypes():
    grad = reste_grad(1.8)
    x, g = data(4096, seed=4)
    x2, g2 = x.view(64, 64).t(), g.view(64, 64).t()  # non-contiguous: copied, same values
    assert fused.surrogate("reste", x2, g2, 1.8) is not None  # the engine takes it
    assert torch.allclose(grad(x2, g2), reste_grad_torch(1.8)(x2, g2), rtol=1e-6, atol=0)
    # float64 is not the engine's: torch's ops, bit for bit
    assert fused.surrogate("reste", x.double(), g.double(), 1.8) is None
    assert torch.equal(grad(x.double(), g.double()), reste_grad_torch(1.8)(x.double(), g.double()))
    # ReSTE constants outside the kernel's range fall back to torch too
    assert fused.surrogate("reste", x, g, 2.0, 1.5, 1e-35) is None
