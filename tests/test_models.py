"""Registry, parameter counts against hand counts, forward/backward of every model."""
import pytest
import torch

import onebit
from onebit.layers import BinaryConv2d, BinaryLayer
from onebit.models.blocks import BinaryUnit, ZeroPadShortcut


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def conv(k, cin, cout):
    return k * k * cin * cout


def bn(c):
    return 2 * c


def hand_count_bireal_imagenet(depths):
    """Bi-Real ResNet: 7x7 stem + BN, one 3x3 binary conv + BN per unit (2 units per basic
    block), down-sampling shortcut = avgpool + 1x1 conv + BN, fc 512 -> 1000 with bias."""
    total = conv(7, 3, 64) + bn(64)
    cin = 64
    for stage, (d, w) in enumerate(zip(depths, (64, 128, 256, 512))):
        for b in range(d):
            for u in range(2):
                total += conv(3, cin, w) + bn(w)
                if cin != w:
                    total += conv(1, cin, w) + bn(w)
                cin = w
    return total + 512 * 1000 + 1000


@pytest.mark.parametrize("name,depths,known", [("bireal_resnet18", (2, 2, 2, 2), 11_689_512),
                                               ("bireal_resnet34", (3, 4, 6, 3), 21_797_672)])
def test_binary_imagenet_resnet_parameter_counts(name, depths, known):
    m = onebit.create_model(name)
    assert n_params(m) == hand_count_bireal_imagenet(depths) == known
    n_binary = sum(1 for x in m.modules() if isinstance(x, BinaryLayer))
    assert n_binary == 2 * sum(depths)  # every 3x3 conv inside blocks, nothing else


def test_cifar_resnet20_counts():
    # 0.27 M parameters (reference.md); 18 binary 3x3 convs in the blocks
    m = onebit.create_model("bireal_resnet20")
    # exact: stem 3x3 conv 3 -> 16 + BN(16); three stages (widths 16 / 32 / 64) of 3 basic blocks x 2
    # units, each a 3x3 conv (no bias) + BN; the first conv of stages 2 and 3 takes the previous width;
    # the down-sampling shortcuts are zero padding (no parameters); fc 64 -> 10 with bias.
    stem = conv(3, 3, 16) + bn(16)                               # 432 + 32 = 464
    stage1 = 6 * (conv(3, 16, 16) + bn(16))                      # 6 x 2,336 = 14,016
    stage2 = conv(3, 16, 32) + 5 * conv(3, 32, 32) + 6 * bn(32)  # 4,608 + 46,080 + 384 = 51,072
    stage3 = conv(3, 32, 64) + 5 * conv(3, 64, 64) + 6 * bn(64)  # 18,432 + 184,320 + 768 = 203,520
    fc = 64 * 10 + 10                                            # 650
    assert stem + stage1 + stage2 + stage3 + fc == 269_722
    assert n_params(m) == 269_722
    binary = sum(x.weight.numel() for x in m.modules() if isinstance(x, BinaryConv2d))
    assert binary == 3 * 3 * (16 * 16 * 6 + 16 * 32 + 32 * 32 * 5 + 32 * 64 + 64 * 64 * 5) == 267_264
    assert sum(1 for x in m.modules() if isinstance(x, BinaryConv2d)) == 18
    assert not isinstance(m.stem[0], BinaryLayer) and not isinstance(m.fc, BinaryLayer)
    assert isinstance(m.stages[1][0][0].shortcut, ZeroPadShortcut)


def react_extra(depths, widths, w0):
    """What ReActNet adds to the Bi-Real count: per binary unit (2 per basic block) an RSign shift
    per input channel and RPReLU's shift_in, slope and shift_out per output channel."""
    total, cin = 0, w0
    for d, w in zip(depths, widths):
        for _ in range(2 * d):
            total += cin + 3 * w
            cin = w
    return total


def test_reactnet_resnet20_counts():
    # bireal_resnet20 (269,722, counted above) + per unit C_in (RSign) + 3 C_out (RPReLU):
    #   stage 1: 6 units 16 -> 16:                    6 x (16 + 48)          =   384
    #   stage 2: 16 -> 32, then 5 units 32 -> 32:     (16 + 96) + 5 x 128    =   752
    #   stage 3: 32 -> 64, then 5 units 64 -> 64:     (32 + 192) + 5 x 256   = 1,504
    # 2,640 in all; the binary conv weights, BNs, zero-pad shortcuts, stem and fc are Bi-Real's.
    assert react_extra((3, 3, 3), (16, 32, 64), 16) == 384 + 752 + 1_504 == 2_640
    m = onebit.create_model("reactnet_resnet20")
    assert n_params(m) == 269_722 + 2_640 == 272_362
    assert sum(x.weight.numel() for x in m.modules() if isinstance(x, BinaryConv2d)) == 267_264


@pytest.mark.parametrize("name,depths,bireal,extra", [
    # stage 1: 4 x (64 + 192) = 1,024; stage 2: (64 + 384) + 3 x 512 = 1,984;
    # stage 3: (128 + 768) + 3 x 1,024 = 3,968; stage 4: (256 + 1,536) + 3 x 2,048 = 7,936
    ("reactnet_resnet18", (2, 2, 2, 2), 11_689_512, 14_912),
    # stage 1: 6 x 256 = 1,536; stage 2: 448 + 7 x 512 = 4,032; stage 3: 896 + 11 x 1,024 = 12,160;
    # stage 4: 1,792 + 5 x 2,048 = 12,032
    ("reactnet_resnet34", (3, 4, 6, 3), 21_797_672, 29_760)])
def test_reactnet_imagenet_resnet_parameter_counts(name, depths, bireal, extra):
    assert hand_count_bireal_imagenet(depths) == bireal
    assert react_extra(depths, (64, 128, 256, 512), 64) == extra
    assert n_params(onebit.create_model(name)) == bireal + extra


def test_reactnet_style_uses_rsign_and_rprelu():
    m = onebit.create_model("reactnet_resnet18")
    unit = m.stages[0][0][0]
    assert type(unit.conv.input_binarizer).__name__ == "RSign"
    assert type(unit.act).__name__ == "RPReLU"


def test_binary_stem_and_head_are_configurable():
    m = onebit.create_model("bireal_resnet20", binary_stem=True, binary_head=True)
    assert isinstance(m.stem[0], BinaryLayer) and m.stem[0].input_binarizer is None
    assert isinstance(m.fc, BinaryLayer)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _randomise_bns(module):
    """Running statistics and affine terms far from the identity, so a missing BN shows."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-2, 2)
                m.running_var.uniform_(0.5, 4)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)


def _bn(y, m):  # eval BatchNorm, written out
    c = (1, -1, 1, 1)
    return (y - m.running_mean.view(c)) / torch.sqrt(m.running_var.view(c) + m.eps) * m.weight.view(c) + m.bias.view(c)


def _sgn(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_binary_unit_closed_form():
    torch.manual_seed(0)
    unit = BinaryUnit(4, 4, 1, binary={"input_binarizer": "ste", "weight_binarizer": "ste", "scale": "none"},
                      act="identity").eval()
    _randomise_bns(unit)
    x = torch.randn(1, 4, 5, 5)
    y = torch.nn.functional.conv2d(_sgn(x), _sgn(unit.conv.weight), padding=1)
    assert torch.allclose(unit(x), _bn(y, unit.bn) + x, atol=1e-5)


def test_reactnet_unit_closed_form():
    """Stride 2 with Bi-Real's down-sampling shortcut (2x2 average pool, real 1x1 conv, BN), RSign
    thresholds, per-channel weight scale and RPReLU, all written out."""
    torch.manual_seed(0)
    unit = BinaryUnit(4, 8, 2, binary={"input_binarizer": "rsign", "weight_binarizer": "ste", "scale": "channel"},
                      act="rprelu").eval()
    _randomise_bns(unit)
    act, shift = unit.act, unit.conv.input_binarizer.shift.bias.detach()
    with torch.no_grad():
        shift.uniform_(-0.3, 0.3)
        act.shift_in.uniform_(-0.5, 0.5), act.slope.uniform_(0.1, 0.5), act.shift_out.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 6, 6)
    w = unit.conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    y = torch.nn.functional.conv2d(_sgn(x + shift.view(1, -1, 1, 1)), _sgn(w), stride=2, padding=1) * alpha
    sc_conv, sc_bn = unit.shortcut[1], unit.shortcut[2]
    r = _bn(torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2), sc_conv.weight), sc_bn)
    t = _bn(y, unit.bn) + r - act.shift_in.view(1, -1, 1, 1)
    expect = torch.where(t >= 0, t, t * act.slope.view(1, -1, 1, 1)) + act.shift_out.view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(unit(x), expect, atol=1e-5)


def test_zero_pad_shortcut():
    s = ZeroPadShortcut(2, 4, 2)
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = s(x)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[:, 1:3], x[:, :, ::2, ::2]) and y[:, 0].abs().sum() == 0 and y[:, 3].abs().sum() == 0


def test_overrides_reach_every_binary_layer():
    m = onebit.create_model("bireal_resnet20", input_binarizer={"name": "reste", "o_end": 3},
                            weight_binarizer="reste", scale="tensor", num_classes=100)
    convs = [x for x in m.modules() if isinstance(x, BinaryConv2d)]
    assert all(type(c.input_binarizer).__name__ == "ReSTE" and c.scale == "tensor" for c in convs)
    assert m.fc.out_features == 100


@pytest.mark.parametrize("name", onebit.list_models())
def test_every_registry_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    m = onebit.create_model(name)
    if hasattr(m, "default_input_size"):  # transformers take their own image size
        x = torch.randn(2, *m.default_input_size)
    else:
        size = 32 if ("resnet20" in name or "cifar" in name) else 64
        x = torch.randn(2, 3, size, size)
    y = m(x)
    assert y.shape == (2, m.num_classes) and torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameter got no gradient"
    assert sum(g.abs().sum().item() for g in grads) > 0
    m.eval()
    with torch.no_grad():
        assert m(x).shape == y.shape


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*did you mean"):
        onebit.create_model("resnet21")
    with pytest.raises(ValueError, match="unknown shortcut"):
        onebit.create_model("bireal_resnet20", shortcut="maxpool")
    with pytest.raises(ValueError, match="num_classes"):
        onebit.create_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="expected images"):
        onebit.create_model("resnet20")(torch.randn(3, 32, 32))


def test_list_models_pattern():
    assert onebit.list_models("bireal_*") == sorted(n for n in onebit.list_models() if n.startswith("bireal_"))
    assert "reactnet_resnet34" in onebit.list_models()


def test_unknown_model_error_counts_what_list_models_prints():
    with pytest.raises(ValueError, match=f"lists the {len(onebit.list_models())} names"):
        onebit.create_model("no_such_model")


def test_unknown_model_option_is_named():
    with pytest.raises(ValueError, match="model 'bireal_resnet20' takes no option 'nokey'"):
        onebit.create_model("bireal_resnet20", nokey=1)


def test_subpackages_reachable_after_a_plain_import():
    """`import onebit` alone gives onebit.deploy.pack, onebit.analysis.complexity, ... (loaded on first use)."""
    import subprocess
    import sys
    code = ("import onebit, sys; assert 'onebit.deploy' not in sys.modules; "
            "print(all(callable(f) for f in (onebit.deploy.pack, onebit.analysis.complexity, onebit.data.build_dataset, "
            "onebit.train.train, onebit.zoo.load)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-1500:]
