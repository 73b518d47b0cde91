"""Estimators against their closed forms: forward values, gradients, schedules, errors."""
import math

import numpy as np
import pytest
import torch

import onebit
from onebit import binarize

# points that hit every branch: 0, +-m, +-1, +-c, +-t and large |x|
POINTS = [0.0, 0.05, -0.05, 0.1, -0.1, 0.3, -0.3, 0.5, -0.5, 0.99, -0.99, 1.0, -1.0, 1.2, -1.2,
          1.5, -1.5, 1.7, -1.7, 3.0, -3.0, 1e4, -1e4]


def grad_of(b, xs):
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    y = b(x)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def test_sign_of_zero_is_plus_one():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2.0, -2.0])
    assert binarize.sign(x).tolist() == [1, 1, 1, -1, 1, -1]
    for name in ("ste", "clipped_ste", "approx_sign", "reste", "progressive"):
        b = binarize.get(name)
        if name == "progressive":
            b.set_progress(1.0)
        assert b(torch.zeros(3)).tolist() == [1, 1, 1], name


@pytest.mark.parametrize("name", ["ste", "clipped_ste", "approx_sign", "reste"])
def test_forward_is_sign_everywhere(name):
    y, _ = grad_of(binarize.get(name), POINTS)
    assert y.tolist() == [1.0 if p >= 0 else -1.0 for p in POINTS]


def test_identity_ste_gradient():
    _, g = grad_of(binarize.get("ste"), POINTS)
    assert g.tolist() == [1.0] * len(POINTS)


@pytest.mark.parametrize("c", [1.0, 1.5, 0.25])
def test_clipped_ste_gradient(c):
    _, g = grad_of(binarize.get("clipped_ste", c=c), POINTS)
    assert g.tolist() == [1.0 if abs(p) <= c else 0.0 for p in POINTS]


def _next_up(c: float, dtype: torch.dtype) -> torch.Tensor:
    """The representable value right above c > 0 in ``dtype``, computed independently of torch.nextafter:
    c + ulp(c), ulp(c) = 2^(e - p) for c = f 2^e, f in [0.5, 1), p significant bits (24 float32, 11
    float16, 8 bfloat16); cross-checked with numpy's nextafter where numpy has the dtype."""
    bits = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}[dtype]
    _, e = math.frexp(c)
    up = c + 2.0 ** (e - bits)
    if dtype in (torch.float32, torch.float16):
        np_dtype = np.float32 if dtype is torch.float32 else np.float16
        assert float(np.nextafter(np_dtype(c), np_dtype(np.inf))) == up
    t = torch.tensor(up, dtype=dtype)
    assert t.item() == up  # representable: no rounding happened
    # and adjacent: the midpoint between c and up is not representable (it rounds to c or up)
    assert torch.tensor((c + up) / 2, dtype=dtype).item() in (c, up)
    return t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c", [1.0, 1.5, 0.25])
def test_clipped_ste_gradient_window_in_low_precision(c, dtype):
    """The window |x| <= c is closed, and exactly one ulp wide at its edge in every dtype: +-c passes
    the gradient, the next representable values outside do not."""
    cd = torch.tensor(c, dtype=dtype)
    assert cd.item() == c  # c is exact in the dtype, so "|x| <= c" is unambiguous
    up = _next_up(c, dtype)
    assert up.item() > c
    x = torch.stack([cd, -cd, up, -up]).requires_grad_(True)
    y = binarize.get("clipped_ste", c=c)(x)
    assert y.dtype == dtype and y.tolist() == [1.0, -1.0, 1.0, -1.0]
    y.backward(torch.full_like(y, 3.0))
    assert x.grad.dtype == dtype
    assert x.grad.tolist() == [3.0, 3.0, 0.0, 0.0]


def test_approx_sign_gradient():
    _, g = grad_of(binarize.get("approx_sign"), POINTS)
    expect = [2 + 2 * p if -1 <= p < 0 else (2 - 2 * p if 0 <= p < 1 else 0.0) for p in POINTS]
    assert torch.allclose(g, torch.tensor(expect, dtype=torch.float64))


def reste_expected(p, o, t=1.5, m=0.1):
    a = abs(p)
    if a > t:
        return 0.0
    if a <= m:
        return m ** (1 / o) / m
    return (1 / o) * a ** ((1 - o) / o)


@pytest.mark.parametrize("o", [1.0, 2.0, 3.0, 4.0])
def test_reste_fixed_o_gradient(o):
    _, g = grad_of(binarize.get("reste", o=o), POINTS)
    expect = [reste_expected(p, o) for p in POINTS]
    assert torch.allclose(g, torch.tensor(expect, dtype=torch.float64))


def test_reste_known_values_o3():
    # reference.md: for o=3 the flat zone gives 4.64, just above 0.1 about 1.55, at |x|=1 0.333
    _, g = grad_of(binarize.get("reste", o=3), [0.0, 0.1000001, 1.0, 1.5, 1.5001])
    assert g[0].item() == pytest.approx(4.6416, abs=1e-3)
    assert g[1].item() == pytest.approx(1.547, abs=1e-3)
    assert g[2].item() == pytest.approx(1 / 3)
    assert g[3].item() == pytest.approx((1 / 3) * 1.5 ** (-2 / 3))
    assert g[4].item() == 0.0


def test_reste_o1_is_clipped_ste_at_t():
    _, g1 = grad_of(binarize.get("reste", o=1, t=1.5), POINTS)
    _, g2 = grad_of(binarize.get("clipped_ste", c=1.5), POINTS)
    assert torch.equal(g1, g2)


def test_reste_gradient_matches_autograd_of_rectified_power():
    # inside m < |x| <= t the surrogate is exactly d/dx of f_o(x) = sign(x)|x|^(1/o)
    o = 2.5
    xs = torch.linspace(0.11, 1.49, 50, dtype=torch.float64)
    xs = torch.cat([xs, -xs]).requires_grad_(True)
    binarize.rectified_power(xs, o).sum().backward()
    _, g = grad_of(binarize.get("reste", o=o), xs.detach().tolist())
    assert torch.allclose(g, xs.grad)


@pytest.mark.parametrize("schedule,mid", [
    ("cos", 1 + 2 * (1 - math.cos(math.pi / 4))),
    ("linear", 2.0),
    ("power", 1 + 2 * 0.25),
    ("fixed", 3.0),
])
def test_reste_progressive_schedules(schedule, mid):
    b = binarize.get("reste", o_end=3, schedule=schedule)
    start = 3.0 if schedule == "fixed" else 1.0
    assert b.o == pytest.approx(start)
    model = torch.nn.Sequential(torch.nn.Identity(), b)
    onebit.set_progress(model, 0.5)
    assert b.o == pytest.approx(mid)
    onebit.set_progress(model, 1.0)
    assert b.o == pytest.approx(3.0)
    # the gradient follows the scheduled o
    _, g = grad_of(b, [0.5])
    assert g.item() == pytest.approx(reste_expected(0.5, 3.0))


@pytest.mark.parametrize("kind,t,expect", [
    # power p = 3 (not the default 2): start + (end - start) t^p
    ("power", 0.5, 2.0 + (7.0 - 2.0) * 0.5 ** 3),
    ("power", 0.25, 2.0 + (7.0 - 2.0) * 0.25 ** 3),
    # cos: start + (end - start) (1 - cos(pi t / 2))
    ("cos", 0.25, 2.0 + (7.0 - 2.0) * (1 - math.cos(math.pi / 8))),
    ("cos", 0.5, 2.0 + (7.0 - 2.0) * (1 - math.sqrt(0.5))),
    # linear: start + (end - start) t
    ("linear", 0.25, 2.0 + (7.0 - 2.0) * 0.25),
    ("fixed", 0.25, 7.0),
])
def test_schedule_closed_forms_off_the_defaults(kind, t, expect):
    """The documented formulas with start = 2 (not 1), end = 7 and power = 3 (not 2)."""
    s = binarize.Schedule(2.0, 7.0, kind, power=3)
    assert s(t) == pytest.approx(expect, rel=1e-15, abs=0)
    if kind != "fixed":
        assert s(0.0) == 2.0 and s(1.0) == pytest.approx(7.0, rel=1e-15)
    # and through ReSTE's own options (start is always 1 there): o = 1 + (o_end - 1) t^p
    if kind == "power":
        b = binarize.get("reste", o_end=4, schedule="power", power=3)
        b.set_progress(t)
        assert b.o == pytest.approx(1 + 3 * t ** 3, rel=1e-15)


def test_schedule_decreasing_and_fractional_power():
    # end < start, and a fractional power: the same formula, no clamping or reordering
    s = binarize.Schedule(5.0, 1.0, "power", power=0.5)
    assert s(0.25) == pytest.approx(5.0 - 4.0 * 0.5, rel=1e-15)
    assert binarize.Schedule(5.0, 1.0, "cos")(1 / 3) == pytest.approx(5.0 - 4.0 * (1 - math.cos(math.pi / 6)))


def test_reste_default_is_cos_to_3():
    b = binarize.get("reste")
    b.set_progress(1.0)
    assert b.o == pytest.approx(3.0) and b.schedule.kind == "cos"


def test_progressive_binarizer_anneals_to_sign():
    b = binarize.get("progressive", switch=0.3, tau_min=1e-7, clamp=None)
    w = torch.tensor([-2.0, -0.5, -0.1, 0.0, 0.1, 0.5, 2.0], requires_grad=True)
    # t = 0: tau = 1 -> clamp(w, -1, 1)
    assert b(w).tolist() == pytest.approx([-1, -0.5, -0.1, 0, 0.1, 0.5, 1])
    # t = 0.15: tau = 1e-7 ** 0.5 = 3.16e-4
    b.set_progress(0.15)
    assert b.tau == pytest.approx(1e-7 ** 0.5)
    assert torch.allclose(b(w), (w / b.tau).clamp(-1, 1))
    # t >= switch: hard sign, sign(0) = +1
    for t in (0.3, 0.5, 1.0):
        b.set_progress(t)
        assert b.hard and b(w).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    # identity gradient at every stage
    y = b(w)
    y.backward(torch.arange(7.0))
    assert w.grad.tolist() == list(range(7))


def test_progressive_default_is_bnexts_schedule():
    """BNext's code: tau = 0.9^e in epoch e of 512, hard sign from e = 153 (0.9^153 < 1e-7). With
    the trainer's t = e / 511 the default switch gives the same epoch and tau."""
    b = binarize.get("progressive")
    hard = [e for e in range(512) if (b.set_progress(e / 511), b.hard)[1]]
    assert hard[0] == 153 and hard == list(range(153, 512))
    for e in (1, 50, 100, 152):
        b.set_progress(e / 511)
        assert b.tau == pytest.approx(0.9 ** e, rel=1e-12), e


def test_progressive_clamps_latent_weights_in_training_only():
    b = binarize.get("progressive", clamp=1.5)
    w = torch.nn.Parameter(torch.tensor([-3.0, 0.2, 2.0]))
    b.eval()
    b(w)
    assert w.tolist() == pytest.approx([-3.0, 0.2, 2.0])
    b.train()
    b(w)
    assert w.tolist() == pytest.approx([-1.5, 0.2, 1.5])


def test_progressive_clamps_a_layers_weights_and_refuses_centring():
    """In a layer the clamp reaches the latent weights themselves; with center=True it would clamp a
    centred copy and leave the weights alone, so that combination is refused (clamp=None allowed)."""
    from onebit.layers import BinaryLinear
    layer = BinaryLinear(3, 2, weight_binarizer={"name": "progressive", "clamp": 1.5}, scale="none").train()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[5.0, -0.5, 0.25], [-4.0, 1.0, 2.0]]))
    layer(torch.randn(4, 3))
    assert layer.weight.tolist() == [[1.5, -0.5, 0.25], [-1.5, 1.0, 1.5]]
    with pytest.raises(ValueError, match="center=True with the ProgressiveBinarizer weight binarizer"):
        BinaryLinear(3, 2, weight_binarizer="progressive", center=True)
    BinaryLinear(3, 2, weight_binarizer={"name": "progressive", "clamp": None}, center=True)


def test_rsign_threshold_and_rprelu_closed_form():
    r = binarize.get("rsign", channels=3)
    with torch.no_grad():
        r.shift.bias.copy_(torch.tensor([0.5, -0.5, 0.0]))
    x = torch.tensor([[-0.4, 0.4, 0.0]]).view(1, 3, 1, 1)
    assert r(x).flatten().tolist() == [1, -1, 1]
    p = binarize.RPReLU(2, dim=-1)
    with torch.no_grad():
        p.shift_in.copy_(torch.tensor([1.0, -1.0]))
        p.slope.copy_(torch.tensor([0.1, 0.5]))
        p.shift_out.copy_(torch.tensor([2.0, 0.0]))
    x = torch.tensor([[0.0, 0.0], [3.0, -3.0]])
    # PReLU(x - g) + z: [0-1 -> -0.1 + 2, 0+1 -> 1], [3-1 -> 2 + 2, -3+1 -> -1]
    assert p(x).flatten().tolist() == pytest.approx([1.9, 1.0, 4.0, -1.0])
    # the same channels on a middle axis (neither dim 1 nor the last): the generic branch, and channel
    # dim 1 (aten's prelu) give the same closed form
    for dim, x4 in ((2, x.view(1, 1, 2, 2).transpose(2, 3)), (1, x.view(1, 2, 2).transpose(1, 2))):
        q = binarize.RPReLU(2, dim=dim)
        q.load_state_dict(p.state_dict())
        y = q(x4)
        back = y.transpose(2, 3).reshape(2, 2) if dim == 2 else y.transpose(1, 2).reshape(2, 2)
        assert back.flatten().tolist() == pytest.approx([1.9, 1.0, 4.0, -1.0]), dim
    lb = binarize.LearnableBias(4)
    assert lb(torch.ones(2, 4, 3, 3)).shape == (2, 4, 3, 3)


def test_rsign_gradient_reaches_threshold():
    r = binarize.get("rsign", channels=2, estimator="clipped_ste")
    x = torch.tensor([[0.5, 2.0]]).view(1, 2, 1, 1)
    r(x).sum().backward()
    # d sign(x + b)/db = 1{|x + b| <= 1}
    assert r.shift.bias.grad.tolist() == [1.0, 0.0]


def test_lsq_round_clip_forward_and_gradients():
    q = binarize.get("lsq", init=0.5, grad="bit")
    p = torch.tensor([[-0.1, 0.1, 0.3, 0.5, 0.9]], requires_grad=True)
    y = q(p)
    assert y.tolist() == [[0.0, 0.0, 0.5, 0.5, 0.5]]
    y.sum().backward()
    assert p.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]
    qs = p.detach() / 0.5
    expect = sum((round(v) - v) if 0 <= v <= 1 else (1.0 if v > 1 else 0.0) for v in qs[0].tolist())
    assert q.step.grad.item() == pytest.approx(expect)
    # LSQ scales the step gradient by 1/sqrt(N Q_p), N = elements per sample
    q2 = binarize.get("lsq", init=0.5, grad="lsq")
    q2(p.detach()).sum().backward()
    assert q2.step.grad.item() == pytest.approx(expect / math.sqrt(5))


def test_set_progress_counts_and_validates():
    m = onebit.create_model("bireal_resnet20", input_binarizer="reste", weight_binarizer="reste")
    # bireal_resnet20: 3 stages x 3 basic blocks x 2 binary units (Bi-Real: one unit per 3x3 conv) =
    # 18 BinaryConv2d, each with an input and a weight binarizer (both ReSTE here) = 36 modules with a
    # set_progress.  The stem conv, the shortcuts (zero padding) and the fc are real-valued: none.
    convs = [mod for mod in m.modules() if type(mod).__name__ == "BinaryConv2d"]
    restes = [mod for mod in m.modules() if isinstance(mod, binarize.ReSTE)]
    assert len(convs) == 3 * 3 * 2 and len(restes) == 2 * len(convs)
    assert onebit.set_progress(m, 0.25) == 36
    o = 1 + 2 * (1 - math.cos(math.pi * 0.25 / 2))  # every one of them moved to the cos schedule at t
    assert all(r.progress == 0.25 and r.o == pytest.approx(o, rel=1e-15) for r in restes)
    for bad in (-0.1, 1.5, "half", float("nan")):
        with pytest.raises(ValueError, match="progress"):
            onebit.set_progress(m, bad)


@pytest.mark.parametrize("call,match", [
    (lambda: binarize.get("nope"), "unknown binarizer 'nope'.*available: approx_sign"),
    (lambda: binarize.get("clipped_ste", c=0), "threshold c"),
    (lambda: binarize.get("clipped_ste", c=-1), "threshold c"),
    (lambda: binarize.get("reste", o=0.5), "o must be >= 1"),
    (lambda: binarize.get("reste", schedule="exp"), "allowed: cos, linear, power, fixed"),
    (lambda: binarize.get("reste", t=0), "threshold t"),
    (lambda: binarize.get("reste", bogus=1), "allowed options"),
    (lambda: binarize.get("progressive", switch=0), "switch"),
    (lambda: binarize.get("rsign", channels=0), "channels"),
    (lambda: binarize.build({"o_end": 3}), "no 'name'"),
])
def test_bad_options_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_available_lists_the_papers_estimators():
    names = binarize.available()
    for n in ("ste", "clipped_ste", "approx_sign", "reste", "progressive", "rsign", "lsq"):
        assert n in names
