"""Training diagnostics against closed forms: flip ratio, histograms, ReSTE indicators."""
import json
import math

import pytest
import torch

import onebit
from onebit.layers import BinaryLinear
from onebit.train import diagnostics as Dg


def test_flip_ratio_counts_sign_changes():
    lin = BinaryLinear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.5, 0.0, 1.0], [-1.0, 2.0, 0.1, -0.1]]))
    before = Dg.sign_snapshot(lin)
    with torch.no_grad():
        lin.weight[0, 0] = -0.1  # flips
        lin.weight[1, 2] = 0.0   # stays >= 0
        lin.weight[1, 3] = 0.0   # -0.1 -> 0: flips (sign(0) = +1)
    assert Dg.flip_ratio(before, Dg.sign_snapshot(lin)) == pytest.approx(2 / 8)


def test_latent_histogram_counts_every_weight():
    m = onebit.create_model("bireal_resnet20")
    h = Dg.latent_histogram(m, bins=10)
    assert h["lo"] == -1.5 and h["hi"] == 1.5 and len(h["counts"]) == 10
    assert sum(h["counts"]) == 267_264  # the 18 binary 3x3 convs, counted by hand in test_models.py
    # weights outside [lo, hi] fall in the end bins: the counts are histc of the clamped weights
    convs = [x for x in m.modules() if isinstance(x, onebit.layers.BinaryConv2d)]
    with torch.no_grad():
        convs[0].weight[0, 0, 0, 0] = 5.0
        convs[-1].weight[0, 0, 0, 0] = -5.0
    w = torch.cat([x.weight.detach().flatten() for x in convs])
    assert w.abs().max() == 5.0
    want = torch.histc(w.clamp(-1.5, 1.5), bins=10, min=-1.5, max=1.5)
    h2 = Dg.latent_histogram(m, bins=10)
    assert h2["counts"] == [int(c) for c in want.tolist()] and sum(h2["counts"]) == 267_264
    assert h2["counts"][0] == h["counts"][0] + 1 and h2["counts"][-1] == h["counts"][-1] + 1


def test_indicators_closed_form():
    x = torch.tensor([-2.0, -1.0, -0.25, 0.05, 0.5, 1.2])
    ind = Dg.estimator_indicators(x, 1.0, t=1.5, m=0.1)
    xc = x.clamp(-1.5, 1.5)
    assert ind["estimating_error"] == pytest.approx((torch.sign(xc) - xc).abs().mean().item())
    g = torch.tensor([0.0, 1, 1, 1, 1, 1])  # o = 1: clipped STE at t = 1.5
    assert ind["gradient_instability"] == pytest.approx(g.double().var().item())
    # o = 2, by hand: f(x) = sign(x) sqrt(|x|) on x clipped to t = 1.5; gradient 0 beyond t,
    # 1 / (2 sqrt|x|) on (m, t], the chord slope sqrt(m) / m on [0, m]
    x = torch.tensor([-2.0, -0.25, 0.05, 0.25, 1.0])
    ind = Dg.estimator_indicators(x, 2.0, t=1.5, m=0.1)
    err = [abs(-1 + math.sqrt(1.5)), 0.5, 1 - math.sqrt(0.05), 0.5, 0.0]
    assert ind["estimating_error"] == pytest.approx(sum(err) / 5)
    g = [0.0, 1.0, math.sqrt(0.1) / 0.1, 1.0, 0.5]
    mean = sum(g) / 5
    assert ind["gradient_instability"] == pytest.approx(sum((v - mean) ** 2 for v in g) / 4)  # unbiased variance
    # larger o: smaller estimating error, larger gradient instability (paper 001 Fig. 1-2)
    w = torch.randn(10000) * 0.3
    a, b = Dg.estimator_indicators(w, 1.0), Dg.estimator_indicators(w, 3.0)
    assert b["estimating_error"] < a["estimating_error"] and b["gradient_instability"] > a["gradient_instability"]
