"""BinaryConv2d's training forward on the engine: torch's conv bit for bit, torch's gradients."""
import contextlib

import pytest
import torch

import onebit
from onebit.binarize import fused
from onebit.layers import BinaryConv2d
from onebit.layers import fused_conv

pytestmark = pytest.mark.skipif(not fused.engine_enabled(), reason="no AVX2 on this CPU: torch's conv runs")


@contextlib.contextmanager
def engine_calls():
    """Counts the calls of the engine's binary convolution (fused.binary_conv2d) inside the block."""
    calls = []
    orig = fused.binary_conv2d

    def spy(*a):
        calls.append(1)
        return orig(*a)

    fused.binary_conv2d = spy
    try:
        yield calls
    finally:
        fused.binary_conv2d = orig


def run(layer, x, engine):
    """(output, input grad, weight grad) of one step with the engine on or off; with it on, the engine's
    binary conv must run exactly once (layer is one binary conv), with it off not at all."""
    fused.use_engine(engine)
    try:
        with engine_calls() as calls:
            x = x.clone().requires_grad_(True)
            layer.zero_grad()
            y = layer(x)
            y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        assert len(calls) == (1 if engine else 0)
        return y.detach(), x.grad, layer.weight.grad.clone()
    finally:
        fused.use_engine(True)


# (in, out, kernel, stride, padding, dilation, groups, N, H, W): odd channel counts, K not a multiple
# of 64, more than 64 channels, stride 2, no / wide padding, dilation, groups, 1x1, 5x5, non-square
CASES = [
    (16, 16, 3, 1, 1, 1, 1, 4, 8, 8),
    (3, 5, 3, 2, 1, 1, 1, 2, 9, 7),
    (70, 33, 3, 1, 1, 1, 1, 2, 6, 5),
    (32, 64, 3, 2, 1, 1, 1, 3, 8, 8),
    (8, 8, 3, 1, 0, 1, 1, 2, 7, 7),
    (8, 6, 3, 1, 2, 2, 1, 2, 9, 9),
    (12, 8, 3, 1, 1, 1, 4, 2, 6, 6),
    (16, 32, 1, 2, 0, 1, 1, 2, 8, 8),
    (8, 8, 5, 1, 2, 1, 1, 1, 11, 10),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("estimator", ["clipped_ste", "reste"])
def test_engine_forward_and_gradients_equal_torch(case, estimator):
    cin, cout, k, s, p, d, g, n, h, w = case
    torch.manual_seed(0)
    layer = BinaryConv2d(cin, cout, k, s, p, d, g, bias=True, input_binarizer=estimator, weight_binarizer=estimator)
    onebit.set_progress(layer, 0.0)  # ReSTE at o = 1 (the clipped STE): surrogate gradients in torch's ops
    x = torch.randn(n, cin, h, w)
    x[0, 0, 0, :2] = torch.tensor([0.0, -0.0])  # sign(0) = sign(-0.0) = +1 on both sides
    fast, slow = run(layer, x, True), run(layer, x, False)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_channels_last_and_empty_batches():
    layer = BinaryConv2d(6, 5, 3, stride=2, padding=1)
    x = torch.randn(3, 6, 9, 9).contiguous(memory_format=torch.channels_last)
    for a, b in zip(run(layer, x, True), run(layer, x, False)):
        assert torch.equal(a, b)
    assert layer(torch.randn(0, 6, 9, 9)).shape == (0, 5, 5, 5)


def test_too_small_inputs_get_torchs_error():
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        BinaryConv2d(4, 4, 5, dilation=2)(torch.randn(1, 4, 6, 6))


def test_a_training_step_is_unchanged():
    """A whole Bi-Real ResNet-20 step (clipped STE: no other engine op involved): same loss, same grads."""
    torch.manual_seed(0)
    model = onebit.create_model("bireal_resnet20", input_binarizer="clipped_ste")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = []
    for engine in (True, False):
        fused.use_engine(engine)
        try:
            model.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        finally:
            fused.use_engine(True)
    assert torch.equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.equal(a, b)


def test_engine_is_used_only_for_signs():
    x = torch.randn(1, 4, 5, 5)
    with engine_calls() as calls:
        BinaryConv2d(4, 4, 3, padding=1)(x)
        assert len(calls) == 1
        for layer in [
            BinaryConv2d(4, 4, 3, padding=1, weight_binarizer=None),        # real weights (ReActNet stage 1)
            BinaryConv2d(4, 4, 3, padding="same"),                          # string padding
            BinaryConv2d(4, 4, 3, padding=1, weight_binarizer="progressive"),  # soft phase: not +-1
            BinaryConv2d(4, 4, 3, padding=1, weight_binarizer=torch.nn.Tanh()),  # a user's own module
        ]:
            layer(x)
        BinaryConv2d(4, 4, 3, padding=1).double()(x.double())                # float64
        assert len(calls) == 1
        hard = BinaryConv2d(4, 4, 3, padding=1, weight_binarizer="progressive")
        onebit.set_progress(hard, 0.5)                                       # past the switch: signs
        hard(x)
        rsign = BinaryConv2d(4, 4, 3, padding=1, input_binarizer={"name": "rsign", "estimator": "approx_sign"})
        rsign(x)
        assert len(calls) == 3


def test_outputs_signs():
    get = onebit.binarize.get
    assert fused_conv.outputs_signs(get("reste"))
    assert fused_conv.outputs_signs(get("rsign", channels=3))
    assert not fused_conv.outputs_signs(None)
    assert not fused_conv.outputs_signs(get("progressive"))
