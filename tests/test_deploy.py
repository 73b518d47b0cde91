"""Packed layers and pack(): the bit-packed twins give the training layers' outputs."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import onebit
from onebit.binarize.react import RPReLU
from onebit.deploy import (PackedBinaryConv2d, PackedBinaryLinear, PackWarning, engine, pack)
from onebit.deploy.attention import PackedBinaryAttention, swap_attention
from onebit.layers import BinaryConv2d, BinaryLinear
from onebit.layers.attention import BinaryAttention

PATHS = engine.available_paths()
RTOL = 1e-4


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    """Equal within rtol, measured against the output's scale (the float sums of alpha * +-1 terms
    differ from acc * alpha by a few ulps of the largest partial sum)."""
    assert a.shape == b.shape and a.dtype == torch.float32
    tol = rtol * max(1.0, float(b.abs().max()))
    err = float((a - b.to(a.dtype)).abs().max())
    assert err <= tol, f"max abs error {err} > {tol}"


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, RSign shifts and RPReLU parameters (a trained model's look)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                    m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
            elif isinstance(m, onebit.layers.LearnableBias):
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, RPReLU):
                m.shift_in.copy_(0.1 * torch.randn(m.channels, generator=g))
                m.shift_out.copy_(0.1 * torch.randn(m.channels, generator=g))
            elif isinstance(m, (BinaryConv2d, BinaryLinear)) and m.bias is not None:
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
    return model


RSIGN = {"name": "rsign", "estimator": "approx_sign"}


# --- PackedBinaryConv2d ----------------------------------------------------------------------

CONV_CASES = [
    # in, out, k, stride, padding, dilation, groups, bias, input binarizer, scale
    (3, 8, 3, 1, 1, 1, 1, False, "approx_sign", "channel"),
    (63, 16, 3, 2, 1, 1, 1, True, RSIGN, "channel"),
    (65, 12, 3, 1, 2, 1, 1, False, "clipped_ste", "tensor"),
    (130, 8, 3, 2, 1, 1, 2, True, RSIGN, "none"),
    (16, 16, 3, 1, 2, 2, 1, False, "reste", "channel"),
    (8, 8, 1, 2, 0, 1, 1, True, "ste", "channel"),
    (12, 6, 2, 1, "same", 1, 1, False, RSIGN, "channel"),  # even kernel: torch pads bottom/right one more
    (10, 4, 3, 1, "valid", 1, 2, True, "approx_sign", "tensor"),
]


def signs(*shape: int) -> torch.Tensor:
    """A random tensor of +-1 (torch's global generator)."""
    return torch.randint(0, 2, shape).float() * 2 - 1


def make_conv(case, seed=0):
    cin, cout, k, s, p, d, g, bias, act, scale = case
    torch.manual_seed(seed)
    layer = BinaryConv2d(cin, cout, k, s, p, d, g, bias=bias, input_binarizer=act, scale=scale)
    return randomize(layer, seed).eval()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"c{c[0]}f{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}")
def test_packed_conv_equals_training_layer(case):
    layer = make_conv(case)
    packed = PackedBinaryConv2d.from_layer(layer)
    for n in (1, 3):
        x = torch.randn(n, case[0], 9, 8)
        x[0, :, 0, 0] = 0.0
        with torch.no_grad():
            ref = layer(x)
        for path in PATHS:
            engine.set_path(path)
            try:
                close(packed(x), ref)
                close(packed(x.contiguous(memory_format=torch.channels_last)), ref)
            finally:
                engine.set_path("auto")


def test_packed_conv_threshold_edges():
    """Inputs exactly at the RSign threshold (x == -b), 0.0 and -0.0 binarize as in training."""
    layer = make_conv((4, 3, 3, 1, 1, 1, 1, False, RSIGN, "channel"))
    b = layer.input_binarizer.shift.bias.detach()
    x = torch.randn(2, 4, 5, 5)
    x[0] = -b.view(4, 1, 1)  # x + b == +0.0 exactly -> +1
    x[1, :, :2] = -0.0
    x[1, :, 2:] = 0.0
    layer.input_binarizer.shift.bias.data[1] = 0.0  # -0.0 + 0.0 and 0.0 + 0.0
    packed = PackedBinaryConv2d.from_layer(layer)
    with torch.no_grad():
        close(packed(x), layer(x))


def test_packed_conv_threads_agree(monkeypatch):
    layer = make_conv((64, 32, 3, 1, 1, 1, 1, True, RSIGN, "channel"))
    packed = PackedBinaryConv2d.from_layer(layer)
    x = torch.randn(2, 64, 14, 14)
    threads = []  # the num_threads argument of each call of the engine's bound convolution
    Bound = engine._C.BoundConv2d

    class Spy:
        def __init__(self, *a):
            self.conv = Bound(*a)

        def __call__(self, xa, xbits, num_threads, *rest):
            threads.append(num_threads)
            return self.conv(xa, xbits, num_threads, *rest)

    monkeypatch.setattr(engine._C, "BoundConv2d", Spy)
    outs = []
    try:
        for t in (3, 1, 2):  # the first call binds the conv, later ones take the resolved call
            engine.set_num_threads(t)
            assert engine.get_num_threads() == t
            outs.append(packed(x))
    finally:
        engine.set_num_threads(None)
    assert threads == [3, 1, 2]  # the setting reaches the engine
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    with torch.no_grad():
        close(outs[0], layer(x))


def test_packed_conv_state_dict_round_trip():
    layer = make_conv((20, 8, 3, 1, 1, 1, 1, True, RSIGN, "channel"))
    a = PackedBinaryConv2d.from_layer(layer)
    b = PackedBinaryConv2d.from_layer(make_conv((20, 8, 3, 1, 1, 1, 1, True, RSIGN, "channel"), seed=1))
    x = torch.randn(1, 20, 6, 6)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    assert a.weight_bits.dtype == torch.int64 and a.weight_bits.numel() * 64 < layer.weight.numel() * 32


def test_packed_layers_check_their_inputs():
    """Wrong shapes and arguments are refused with errors that name the numbers."""
    a = PackedBinaryConv2d.from_layer(make_conv((20, 8, 3, 1, 1, 1, 1, True, RSIGN, "channel")))
    with pytest.raises(ValueError, match=r"expects inputs \(N, 20, H, W\), got shape \(1, 19, 6, 6\)"):
        a(torch.randn(1, 19, 6, 6))
    with pytest.raises(ValueError, match=r"expects inputs \(N, 20, H, W\)"):
        a(torch.randn(20, 6, 6))
    b = PackedBinaryConv2d.from_layer(make_conv((20, 8, 3, 1, 0, 1, 1, True, RSIGN, "channel")))  # no padding
    with pytest.raises(ValueError, match="smaller than the kernel"):
        b(torch.randn(1, 20, 2, 2))
    with pytest.raises(ValueError, match="BatchNorm has 3 features, the layer 8 outputs"):
        a.fold_bn(nn.BatchNorm2d(3).eval())
    with pytest.raises(ValueError, match="eval-mode BatchNorm"):
        a.fold_bn(nn.BatchNorm2d(8))
    with pytest.raises(TypeError, match="expects a BatchNorm"):
        a.fold_bn(nn.Identity())
    with pytest.raises(TypeError, match="expected a BinaryConv2d, got Conv2d"):
        PackedBinaryConv2d.from_layer(nn.Conv2d(4, 4, 3).eval())
    lin = PackedBinaryLinear.from_layer(BinaryLinear(10, 4).eval())
    with pytest.raises(ValueError, match=r"expects inputs \(\.\.\., 10\), got shape \(2, 9\)"):
        lin(torch.randn(2, 9))
    with pytest.raises(TypeError, match="pack expects an nn.Module, got str"):
        pack("model")


# --- PackedBinaryLinear ----------------------------------------------------------------------

LINEAR_CASES = [
    # in, out, bias, input binarizer, scale, center
    (100, 10, True, "approx_sign", "channel", False),
    (64, 33, False, RSIGN, "tensor", True),
    (130, 7, True, {"name": "rsign", "estimator": "clipped_ste"}, "none", True),
    (3, 5, False, "ste", "channel", True),
]


@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"in{c[0]}out{c[1]}{c[4]}{'_center' if c[5] else ''}")
def test_packed_linear_equals_training_layer(case):
    cin, cout, bias, act, scale, center = case
    torch.manual_seed(1)
    layer = randomize(BinaryLinear(cin, cout, bias=bias, input_binarizer=act, scale=scale, center=center)).eval()
    packed = PackedBinaryLinear.from_layer(layer)
    for shape in ((1, cin), (5, cin), (2, 9, cin), (cin,)):
        x = torch.randn(shape)
        with torch.no_grad():
            ref = layer(x)
        for path in PATHS:
            engine.set_path(path)
            try:
                close(packed(x), ref)
            finally:
                engine.set_path("auto")


def test_packed_layers_refuse_training_mode():
    conv = BinaryConv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="training mode"):
        PackedBinaryConv2d.from_layer(conv)
    with pytest.raises(ValueError, match="training mode"):
        PackedBinaryLinear.from_layer(BinaryLinear(4, 4))


# --- pack() on models -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bireal_resnet20", "reactnet_resnet20"])
def test_pack_runs_batchnorm_in_the_epilogue_bit_for_bit(name, monkeypatch):
    """pack() without folding: each BinaryUnit's BatchNorm (then the shortcut add and RPReLU) runs in
    the packed conv's epilogue as torch computes it, so the logits stay bit-identical; it follows
    in-place changes of the BatchNorm; where the engine cannot reproduce torch's BatchNorm the units
    stay unfused, with the same logits."""
    import onebit.deploy.packed as packed_mod
    from onebit.models.blocks import BinaryUnit
    model = randomize(onebit.create_model(name), seed=4).eval()
    x = torch.randn(4, 3, 32, 32)
    packed = pack(model)
    units = [m for m in packed.modules() if isinstance(m, BinaryUnit)]
    fused = packed_mod._torch_bn_fma() is not None
    assert fused, "the engine reproduces neither rounding of this torch's BatchNorm (see _torch_bn_fma)"
    assert units and all((type(m).__name__ == "PackedBinaryUnit") == fused for m in units)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
        for m in (model, packed):  # the same in-place change in both: the cached terms must follow
            bn = [u for u in m.modules() if isinstance(u, BinaryUnit)][2].bn
            bn.running_mean.add_(0.25)
            bn.weight.mul_(-1.5)
        assert torch.equal(packed(x), model(x))
    unfused = pack(model, fuse_units=False)  # the option: the same, with BN, add and RPReLU in torch
    assert all(type(m) is BinaryUnit for m in unfused.modules() if isinstance(m, BinaryUnit))
    monkeypatch.setattr(packed_mod, "_BN_MODE", [None])
    plain = pack(model)
    assert all(type(m) is BinaryUnit for m in plain.modules() if isinstance(m, BinaryUnit))
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
        assert torch.equal(unfused(x), model(x))


@pytest.mark.parametrize("name", ["bireal_resnet20", "reactnet_resnet20"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_pack_model_same_logits(name, fold_bn):
    torch.manual_seed(0)
    model = randomize(onebit.create_model(name), seed=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every binary conv packs: no warnings
        packed = pack(model, fold_bn=fold_bn)
    n_binary = sum(isinstance(m, BinaryConv2d) for m in model.modules())
    assert n_binary > 0
    assert sum(isinstance(m, PackedBinaryConv2d) for m in packed.modules()) == n_binary
    assert not any(isinstance(m, BinaryConv2d) for m in packed.modules())
    if fold_bn:
        assert sum(isinstance(m, nn.BatchNorm2d) for m in packed.modules()) < \
            sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), packed(x)
    close(out, ref)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    # the original model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, BinaryConv2d) for m in model.modules())


def test_conv_epilogue_rprelu_is_torchs_rprelu():
    """engine.conv2d(..., residual=r, rprelu=[gamma, slope, zeta]) == RPReLU(conv + r), bit for bit,
    with zeros, negative slopes and values right at gamma."""
    torch.manual_seed(6)
    layer = make_conv((16, 12, 3, 1, 1, 1, 1, True, RSIGN, "channel"))
    packed = PackedBinaryConv2d.from_layer(layer)
    act = RPReLU(12)
    with torch.no_grad():
        act.shift_in.copy_(torch.randn(12) * 0.5)
        act.slope.copy_(torch.randn(12))
        act.shift_out.copy_(torch.randn(12) * 0.5)
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        y = packed(x)
        r = torch.randn_like(y)
        r[0, :, 0, 0] = act.shift_in - y[0, :, 0, 0]  # t = 0 (up to rounding) on some pixels
        want = act(y + r)
        packed(x, residual=r)  # plans the shape
        a = torch.stack([act.shift_in, act.slope, act.shift_out]).numpy()
        got = packed(x, residual=r, rprelu=a)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="rprelu"):
        packed(x, rprelu=a)


def test_fold_bn_folds_real_conv_batchnorm_pairs():
    """fold_bn also folds a BatchNorm2d into the real nn.Conv2d right before it in an nn.Sequential
    (the stem, the down-sampling shortcuts): one conv with a bias, equal up to float rounding."""
    torch.manual_seed(4)
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6, affine=False)), seed=4).eval()
    x = torch.randn(2, 3, 9, 9)
    with pytest.warns(PackWarning, match=r"no binary layers.*\(BatchNorms folded\)"):
        folded = pack(model, fold_bn=True)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.Identity, nn.ReLU, nn.Conv2d, nn.Identity]
    assert folded[0].bias is not None and model[0].bias is None  # the original is untouched
    with torch.no_grad():
        close(folded(x), model(x), rtol=1e-5)
    with pytest.warns(PackWarning, match="nothing is bit-packed, it stays float32$"):
        assert type(pack(model)[1]) is nn.BatchNorm2d  # only with fold_bn


@pytest.mark.parametrize("name", ["bireal_resnet20", "reactnet_resnet20", "bireal_resnet18_cifar"])
def test_pack_unfolded_is_bit_exact(name):
    """Without BN folding the packed model computes the very same floats: the training layer scales
    an exact integer sum (op on +-1 operands) by alpha, as the engine scales its accumulator, so no
    rounding difference can flip a sign deeper in the network."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = randomize(onebit.create_model(name), seed=seed).eval()
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(pack(model)(x), model(x))


@pytest.mark.parametrize("fold_bn", [False, True])
def test_pack_unit_with_pre_bn_act(fold_bn):
    """A BinaryUnit with a ReLU between its conv and its BatchNorm (the ReSTE authors' ResNet-20s)
    packs exactly: its BatchNorm is not folded into the conv (the ReLU sits between them) but
    applied in the engine's epilogue after the ReLU, as torch applies both, so the packed model
    computes the training model's floats (only the real stem's BatchNorm folds with fold_bn); the
    fused units equal the same units run op by op (fuse_units=False)."""
    from onebit.models.blocks import BinaryUnit
    torch.manual_seed(2)
    model = randomize(onebit.create_model("bireal_resnet20", pre_bn_act="relu"), seed=2).eval()
    units = [m for m in model.modules() if isinstance(m, BinaryUnit)]
    assert units and all(type(u.pre_bn_act) is nn.ReLU for u in units)
    packed = pack(model, fold_bn=fold_bn)
    punits = [m for m in packed.modules() if isinstance(m, BinaryUnit)]
    assert all(type(u).__name__ == "PackedBinaryUnit" and type(u.bn) is nn.BatchNorm2d for u in punits)
    unfused = pack(model, fold_bn=fold_bn, fuse_units=False)
    assert all(type(u) is BinaryUnit for u in unfused.modules() if isinstance(u, BinaryUnit))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for _ in range(2):  # the second call runs the resolved fused calls
            assert torch.equal(packed(x), unfused(x))
            if fold_bn:  # the stem's BatchNorm folds into the real stem conv: equal up to rounding
                close(packed(x), model(x))
            else:
                assert torch.equal(packed(x), model(x))
        u = units[1]  # the unit computes BN(ReLU(conv(x))) + x
        h = torch.randn(2, 16, 8, 8)
        assert torch.equal(u(h), u.bn(torch.relu(u.conv(h))) + h)
        pu = punits[1]  # a changed pre_bn_act is followed, not the cached fused call
        pu.pre_bn_act = nn.Identity()
        assert torch.equal(pu(h), pu.bn(pu.conv(h)) + h)


def test_conv_epilogue_pre_relu_is_torchs_relu():
    """conv(x, pre_relu=True, bn=..., residual=r) == BN(relu(conv(x))) + r bit for bit, with and
    without the residual and the BatchNorm."""
    from onebit.deploy.packed import _bn_epilogue
    torch.manual_seed(7)
    layer = make_conv((16, 12, 3, 1, 1, 1, 1, True, RSIGN, "channel"))
    packed = PackedBinaryConv2d.from_layer(layer)
    bn = randomize(nn.Sequential(nn.BatchNorm2d(12)), seed=7)[0].eval()
    x = torch.randn(2, 16, 7, 7)
    for path in PATHS:  # the portable epilogue and the 8-wide one
        engine.set_path(path)
        try:
            with torch.no_grad():
                y = packed(x)
                assert (y < 0).any() and (y > 0).any()
                r = torch.randn_like(y)
                terms = _bn_epilogue(bn)
                assert torch.equal(packed(x, pre_relu=True), torch.relu(y))
                assert torch.equal(packed(x, pre_relu=True, bn=terms), bn(torch.relu(y)))
                assert torch.equal(packed(x, residual=r, pre_relu=True, bn=terms), bn(torch.relu(y)) + r)
                assert torch.equal(packed(x, residual=r, pre_relu=True), torch.relu(y) + r)
        finally:
            engine.set_path("auto")


@pytest.mark.parametrize("name,size", [("bireal_resnet20", 32), ("reactnet_resnet20", 32), ("bireal_resnet18", 64),
                                       ("reactnet_resnet18", 64)])
def test_pack_fused_units_equal_the_separate_ops(name, size):
    """fold_bn=True: the BinaryUnits add their shortcut in the packed conv's epilogue; the logits are
    bit for bit those of the same folded model with the add done by torch, and the state_dict is the
    one of the unfused model."""
    from onebit.models.blocks import BinaryUnit
    from onebit.deploy.pool import ExactAvgPool2d, SeparableMaxPool2d
    torch.manual_seed(0)
    model = randomize(onebit.create_model(name), seed=1).eval()
    fused = pack(model, fold_bn=True)
    units = [m for m in fused.modules() if isinstance(m, BinaryUnit)]
    assert units and all(type(m).__name__ == "PackedBinaryUnit" for m in units)
    plain = copy.deepcopy(fused)
    for m in plain.modules():
        if type(m).__name__ == "PackedBinaryUnit":
            m.__class__ = BinaryUnit
    assert list(fused.state_dict()) == list(plain.state_dict())
    if name.endswith("resnet18"):
        kinds = {type(m) for m in fused.modules()}
        assert SeparableMaxPool2d in kinds and ExactAvgPool2d in kinds
        assert nn.MaxPool2d not in kinds and nn.AvgPool2d not in kinds
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got, want = fused(x), plain(x)
        assert torch.equal(got, want)
        rel = float((got - model(x)).abs().max() / model(x).abs().max())
        assert rel < 1e-5
        # a channels-last input (the residual is then not contiguous): the unfused fallback, same result
        # as the plain model on that input (torch's real convs may round differently per memory format)
        xcl = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(fused(xcl), plain(xcl))
    if name.startswith("reactnet"):  # RPReLU after the add ran in the engine's epilogue, bit for bit
        acts = [m.act for m in units if isinstance(m.act, RPReLU)]
        assert acts and all("_packed_rprelu" in a.__dict__ for a in acts)
    # state_dict round trip into a fresh pack()
    again = pack(onebit.create_model(name).eval(), fold_bn=True)
    again.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), want)


@pytest.mark.parametrize("name", ["bireal_resnet20", "reactnet_resnet18"])
def test_pack_link_bits_hands_the_same_bits_on(name):
    """link_bits=True: each packed layer feeding the next packed conv emits that conv's input bits;
    the logits are bit for bit those without links, the bits are really used, and bits that may be
    stale (the tensor modified in place, the threshold changed) are ignored, never used."""
    from onebit.deploy.packed import _bits_for_me
    torch.manual_seed(0)
    model = randomize(onebit.create_model(name), seed=2).eval()
    plain, linked = pack(model, fold_bn=True), pack(model, fold_bn=True, link_bits=True)
    producers = [m for m in linked.modules() if "_emit_for" in m.__dict__]
    convs = [m for m in linked.modules() if type(m) is PackedBinaryConv2d]
    assert len(producers) == len(convs) - 1  # every binary conv but the first reads bits handed on
    assert all(type(m.__dict__["_emit_for"]) is PackedBinaryConv2d for m in producers)
    used = []
    for c in convs:
        c.register_forward_pre_hook(lambda mod, args: used.append(_bits_for_me(args[0], mod) is not None))
    x = torch.randn(2, 3, 64 if name.endswith("18") else 32, 64 if name.endswith("18") else 32)
    with torch.no_grad():
        assert torch.equal(linked(x), plain(x))
    assert sum(used) == len(convs) - 1
    # stale bits: a producer's output changed in place, or the consumer's shift changed after emission
    unit = producers[0]
    nxt = unit.__dict__["_emit_for"]
    h = torch.randn(2, unit.conv.in_channels, 16, 16)
    with torch.no_grad():
        y = unit(h)
        assert _bits_for_me(y, nxt) is not None
        y.mul_(-1)
        assert _bits_for_me(y, nxt) is None
        y = unit(h)
        if nxt.shift is not None:
            nxt.shift.add_(0.5)
        else:
            nxt.register_buffer("shift", torch.full((nxt.in_channels,), 0.5))
        assert _bits_for_me(y, nxt) is None


class FreshCopyCheck:
    """module(x) after a change against a deep copy's (which starts with no resolved call), and that
    the change changed the output (changed=False: that it did not), so a stale resolved call shows."""

    def __init__(self, module: nn.Module, x: torch.Tensor):
        self.module = module
        self.new_input(x)

    def new_input(self, x: torch.Tensor) -> None:
        self.x = x
        with torch.no_grad():
            self.last = self.module(x)

    def __call__(self, changed: bool = True) -> None:
        with torch.no_grad():
            got, want = self.module(self.x), copy.deepcopy(self.module)(self.x)
        assert torch.equal(got, want)
        assert changed is not torch.equal(got, self.last)
        self.last = got

    def on_portable_path(self, resolved) -> None:
        """The same integers come out on every engine path, so the resolved call (``resolved()``) must
        show that it was made for the portable one."""
        engine.set_path("portable")
        try:
            self(changed=False)
            assert resolved().path == engine._default_path == "portable"
        finally:
            engine.set_path("auto")


@pytest.mark.parametrize("fold_bn,link_bits", [(False, False), (True, True)])
def test_fused_call_follows_every_change(monkeypatch, fold_bn, link_bits):
    """A PackedBinaryUnit's resolved fused call (_FusedCall) serves repeated calls without the conv's
    forward, and gives way to the full path whenever that would compute something else."""
    from onebit.models.blocks import BinaryUnit
    torch.manual_seed(0)
    packed = pack(randomize(onebit.create_model("reactnet_resnet20"), seed=3).eval(), fold_bn=fold_bn,
                  link_bits=link_bits)
    units = [m for m in packed.modules() if isinstance(m, BinaryUnit)]
    calls = []
    conv_forward = PackedBinaryConv2d.forward
    monkeypatch.setattr(PackedBinaryConv2d, "forward", lambda self, *a, **k: calls.append(1) or conv_forward(self, *a, **k))
    check = FreshCopyCheck(packed, torch.randn(2, 3, 32, 32))
    calls.clear()
    with torch.no_grad():
        assert torch.equal(packed(check.x), check.last)
    assert not calls and all("_fused_call" in u.__dict__ for u in units)  # no conv forward: all resolved
    check(changed=False)
    u = units[4]
    with torch.no_grad():
        u.conv.scale.mul_(-1.5)                                 # conv buffer, in place
        check()
        u.act.slope.add_(0.3)                                   # RPReLU parameter, in place
        check()
        u.conv.register_buffer("bias", u.conv.bias + 0.25)     # conv buffer replaced
        check()
        if not fold_bn:
            u.bn.running_mean.add_(0.5)                         # BatchNorm statistics, in place
            check()
            u.bn.eps = 0.5
            check()
            bn = nn.BatchNorm2d(u.bn.num_features).eval()
            bn.running_var.fill_(4.0)
            u.bn = bn                                           # a new module
            check()
        if link_bits:
            nxt = u.__dict__["_emit_for"]
            nxt.register_buffer("shift", torch.full((nxt.in_channels,), 0.3))  # the next conv's threshold
            check()
        u.act = RPReLU(u.conv.out_channels)                     # another activation module
        check()
    seen = []
    handle = u.conv.register_forward_hook(lambda *args: seen.append(1))
    check(changed=False)
    assert seen                                                 # hooks on the conv still run
    handle.remove()
    check(changed=False)                                        # resolved again, on the default path
    for name in ("bn", "act", "pre_bn_act", "shortcut", "conv"):  # children the fused path computes in place
        seen.clear()                                                # of calling them: a hook added now must run,
        handle = getattr(u, name).register_forward_hook(            # and a conv's hook see the conv's own output
            lambda mod, inp, out: seen.append(name != "conv" or torch.equal(out, mod.forward(inp[0]))) or out * 2)
        check()
        assert seen and all(seen)
        handle.remove()
        check()
    check(changed=False)
    check.on_portable_path(lambda: u.__dict__["_fused_call"])
    check.new_input(torch.randn(3, 3, 32, 32))                  # another batch size
    check(changed=False)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(packed)(check.x), check.last)  # deepcopy with resolved calls inside


def test_resolved_conv_call_follows_every_change(monkeypatch):
    """A packed conv called with x alone resolves its engine call once (_Resolved) and reuses it
    without rebuilding its arrays, and gives way to the full path whenever that would compute
    something else."""
    torch.manual_seed(4)
    layer = BinaryConv2d(70, 24, 3, 1, 1, bias=True, input_binarizer="rsign", scale="channel").eval()
    with torch.no_grad():
        layer.input_binarizer.shift.bias.normal_(0, 0.3)
    p = PackedBinaryConv2d.from_layer(layer)
    built = []
    arrays = PackedBinaryConv2d._arrays
    monkeypatch.setattr(PackedBinaryConv2d, "_arrays", lambda self, path: built.append(1) or arrays(self, path))
    check = FreshCopyCheck(p, torch.randn(2, 70, 9, 9))
    built.clear()
    with torch.no_grad():
        assert torch.equal(p(check.x), check.last) and not built and "_resolved" in p.__dict__
        p.scale.mul_(-1.5)                                      # in place
        check()
        p.shift.add_(0.4)                                       # the RSign threshold, in place
        check()
        p.weight_bits[:3] ^= 1                                  # weight signs, in place
        check()
        p.register_buffer("bias", p.bias + 1.0)                 # replaced
        check()
    check.on_portable_path(lambda: p.__dict__["_resolved"])
    check.new_input(torch.randn(1, 70, 11, 7))                  # another shape
    check(changed=False)
    with torch.no_grad():
        assert torch.equal(p(check.x.clone().requires_grad_()), check.last)  # not resolvable: the full path
        assert torch.equal(copy.deepcopy(p)(check.x), check.last)            # deepcopy with a resolved call


def test_packed_conv_residual_argument():
    torch.manual_seed(3)
    layer = BinaryConv2d(20, 12, 3, 2, 1, bias=True, input_binarizer="approx_sign").eval()
    p = PackedBinaryConv2d.from_layer(layer)
    x = torch.randn(2, 20, 9, 9)
    with torch.no_grad():
        y = p(x)
        r = torch.randn_like(y)
        assert torch.equal(p(x, residual=r), y + r)
        assert torch.equal(p(x, residual=r.transpose(2, 3).contiguous().transpose(2, 3)), y + r)
        assert torch.equal(p(x, residual=r.double()), y + r.double())
        assert p(x[:0], residual=r[:0]).shape == (0, 12, 5, 5)


def test_pack_binary_head_and_stem():
    """A binary head (BinaryLinear) is packed; a binary stem with real inputs is kept, silently."""
    torch.manual_seed(2)
    model = randomize(onebit.create_model("reactnet_resnet20", binary_head=True, binary_stem=True)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = pack(model)
    assert isinstance(packed.fc, PackedBinaryLinear)
    assert isinstance(packed.stem[0], BinaryConv2d)  # real image input: nothing to pack
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), packed(x)
    close(out, ref)
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_pack_refuses_training_mode_naming_the_layer():
    model = onebit.create_model("bireal_resnet20")
    with pytest.raises(ValueError, match="training mode"):
        pack(model)
    model.eval()
    model.stages[1][0][0].conv.train()
    with pytest.raises(ValueError, match=r"'stages\.1\.0\.0\.conv' \(BinaryConv2d\): it is in training mode"):
        pack(model)


class _CustomConv(BinaryConv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_pack_keeps_unknown_layers_with_a_warning():
    torch.manual_seed(4)
    seq = nn.Sequential(
        BinaryConv2d(4, 4, 3, padding=1),                                   # packed
        _CustomConv(4, 4, 3, padding=1),                                    # overridden forward
        BinaryConv2d(4, 4, 3, padding=1, input_binarizer={"name": "lsq"}),  # not a sign
        BinaryConv2d(4, 4, 3, padding=1, weight_binarizer="progressive"),   # soft weights (tau > 0)
        BinaryConv2d(4, 4, 3, padding=1, weight_binarizer=None),            # real weights: kept silently
    ).eval()
    with pytest.warns(PackWarning) as rec:
        packed = pack(seq)
    assert len(rec) == 3
    assert isinstance(packed[0], PackedBinaryConv2d)
    assert type(packed[1]) is _CustomConv and type(packed[2]) is BinaryConv2d and type(packed[3]) is BinaryConv2d
    assert type(packed[4]) is BinaryConv2d
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        close(packed(x), seq(x))


class _Weird(nn.Module):  # a user's own layer: pack() does not know it
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.full((4, 1, 1), 0.5))

    def forward(self, x):
        return x * self.gain


def test_pack_warns_about_a_users_unknown_layer():
    torch.manual_seed(4)
    model = nn.Sequential()
    model.seq = nn.Sequential(BinaryConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), _Weird(), nn.ReLU())
    model.eval()
    with pytest.warns(PackWarning) as rec:
        packed = pack(model)
    assert [str(w.message) for w in rec] == ["pack: keeping 'seq.2' (_Weird) in float32: the packer does not know "
                                             "this layer; it runs in PyTorch as before"]
    assert isinstance(packed.seq[0], PackedBinaryConv2d) and type(packed.seq[2]) is _Weird
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


class _OwnSign(nn.Module):  # a user's layer that binarizes its own weight around a child pack() knows
    def __init__(self):
        super().__init__()
        self.conv = BinaryConv2d(4, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(4, 4, 1, 1))

    def forward(self, x):
        return nn.functional.conv2d(torch.sign(self.conv(x)), torch.sign(self.w))


class _OwnList(nn.Module):  # its own weights in a ParameterList (a torch child module)
    def __init__(self):
        super().__init__()
        self.conv = BinaryConv2d(4, 4, 3, padding=1)
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(4, 4, 1, 1))])

    def forward(self, x):
        return nn.functional.conv2d(torch.sign(self.conv(x)), torch.sign(self.ws[0]))


class _Block(nn.Module):  # a user's container: only calls its children
    def __init__(self):
        super().__init__()
        self.conv, self.bn = BinaryConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) + x


def test_pack_warns_about_a_users_layer_with_its_own_parameters():
    """A non-leaf module of the user's with parameters of its own is named (its child is packed and its
    own weight stays float32); a container of known layers passes silently."""
    torch.manual_seed(5)
    model = nn.Sequential(_OwnSign(), _Block(), _OwnList()).eval()
    with pytest.warns(PackWarning) as rec:
        packed = pack(model)
    assert [str(w.message) for w in rec] == [
        f"pack: keeping '{i}' ({name}) in float32: the packer does not know this layer's own parameters "
        "(its children are packed as usual); it runs in PyTorch as before" for i, name in ((0, "_OwnSign"),
                                                                                          (2, "_OwnList"))]
    assert isinstance(packed[0].conv, PackedBinaryConv2d) and isinstance(packed[1].conv, PackedBinaryConv2d)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        close(packed(x), model(x))


def test_pack_registry_models_know_every_layer():
    """onebit's own models: no layer the packer does not know (torch and onebit classes only)."""
    for name in onebit.list_models():
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            pack(onebit.create_model(name).eval())
        assert not [str(w.message) for w in rec if "does not know" in str(w.message)], name


def test_pack_warns_when_there_is_nothing_to_pack(tmp_path, capsys):
    """A model without binary layers packs to itself with one warning, and the CLI shows it as one
    'onebit: warning:' line (not Python's file:line form, and not once more for the file)."""
    with pytest.warns(PackWarning, match="ResNet has no binary layers"):
        pack(onebit.create_model("resnet20").eval())
    from onebit.cli import main
    assert main(["pack", "resnet20", "--out", str(tmp_path / "fp.onebit")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["onebit: warning: pack: ResNet has no binary layers (BinaryConv2d / BinaryLinear): "
                   "nothing is bit-packed, it stays float32"]


def test_pack_hard_progressive_weights():
    layer = BinaryConv2d(6, 4, 3, padding=1, weight_binarizer="progressive", scale="none")
    onebit.set_progress(layer, 1.0)  # past the switch: sign(w)
    packed = pack(nn.Sequential(layer).eval())
    assert isinstance(packed[0], PackedBinaryConv2d)
    x = torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        close(packed(x), layer(x))


@pytest.mark.parametrize("kw", [{}, {"pool_branches": True, "sr_ratios": (2,), "weight_scale": "tensor"}])
def test_pack_binaryvit_same_logits(kw):
    """BinaryViT (CIFAR baseline; and with the cls token beside pooling branches and Bi-SR-MHA, one
    alpha per BiFC): its BiFC linears (RSign over the last dim, centred weights, TokenBatchNorm
    after) are packed; the attention products run on the engine.  Unfolded, the logits are the
    model's bit for bit (P V summed as integers and scaled once in both); BN folding rounds differently."""
    torch.manual_seed(5)
    model = randomize(onebit.create_model("binaryvit_cifar_baseline", **kw), seed=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    n_linear = sum(isinstance(m, BinaryLinear) and m.binary_inputs and m.binary_weights for m in model.modules())
    for fold_bn in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            packed = pack(model, fold_bn=fold_bn)
        assert sum(isinstance(m, PackedBinaryLinear) for m in packed.modules()) == n_linear > 0
        assert sum(isinstance(m, PackedBinaryAttention) for m in packed.modules()) == sum(
            isinstance(m, BinaryAttention) for m in model.modules()) > 0
        with torch.no_grad():
            out = packed(x)
        close(out, ref)
        assert torch.equal(out.argmax(1), ref.argmax(1))
        if not fold_bn:
            assert torch.equal(out, ref)


@pytest.mark.parametrize("sr", [1, 2])
def test_packed_attention_products_match_torch(sr):
    """Q K^T exact (the same integer scores, hence the same P); P V = alpha (acc + colsum) / 2 equals
    the float64 product exactly, and so does the training layer's alpha ((P / alpha) V); the plain
    float32 P V (a running sum of +-alpha) only to rounding; grid with M != N keys."""
    torch.manual_seed(sr)
    att = randomize(BinaryAttention(48, heads=3, sr_ratio=sr, act="clipped_ste"), seed=sr).eval()
    with torch.no_grad():
        att.prob.step.fill_(0.02)
    b, h, n, m, d = 2, 3, 16, 16 // sr ** 2, 16
    qb, kb, vb = signs(b, h, n, d), signs(b, h, m, d), signs(b, h, m, d)
    packed = copy.deepcopy(att)
    assert swap_attention(packed) == 1 and type(packed) is PackedBinaryAttention
    with torch.no_grad():
        ref = att.attend(qb, kb, vb)
        out = packed.attend(qb, kb, vb)
        p = att.probs(qb @ kb.transpose(-2, -1))
    alpha = att.prob.step.item()  # 0.02 rounded to float32
    assert set(p.unique().tolist()) <= {0.0, alpha} and (p > 0).any()
    exact = (p.double() @ vb.double()).float()  # float64 sums of +-alpha are exact: one rounding, as the engine
    assert torch.equal(out, exact) and torch.equal(ref, exact)
    assert torch.allclose(p @ vb, exact, rtol=1e-5, atol=1e-6)
    h_in = torch.randn(b, 16, 48)
    with torch.no_grad():
        assert torch.equal(packed(h_in, (4, 4)), att(h_in, (4, 4)))


@pytest.mark.parametrize("step", [0.0, -0.01])
def test_packed_attention_uses_the_floored_step(step):
    """A trained alpha_P at or below 0 runs as MIN_STEP = 1e-5 in PyTorch (every P entry at 1e-5 here):
    the engine's P V uses the same floored value, not the raw parameter."""
    torch.manual_seed(3)
    att = randomize(BinaryAttention(16, heads=2, act="clipped_ste"), seed=3).eval()
    with torch.no_grad():
        att.prob.step.fill_(step)
    packed = copy.deepcopy(att)
    assert swap_attention(packed) == 1
    qb, kb, vb = signs(2, 2, 9, 8), signs(2, 2, 9, 8), signs(2, 2, 9, 8)
    with torch.no_grad():
        floor = att.prob.effective_step().item()
        assert floor == pytest.approx(1e-5) and set(att.probs(qb @ kb.transpose(-2, -1)).unique().tolist()) == {floor}
        assert torch.equal(packed.attend(qb, kb, vb), att.attend(qb, kb, vb))


def test_attention_with_real_probabilities_is_not_swapped():
    att = BinaryAttention(16, heads=2, act=None, quantize_probs=False).eval()
    assert swap_attention(att) == 0 and type(att) is BinaryAttention


def test_packed_layer_keeps_float64_inputs_dtype():
    layer = make_conv((5, 4, 3, 1, 1, 1, 1, True, RSIGN, "channel"))
    packed = PackedBinaryConv2d.from_layer(layer)
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    y = packed(x)
    assert y.dtype == torch.float64
    with torch.no_grad():
        close(y.float(), layer(x.float()))


def test_packed_modules_pickle_and_deepcopy_after_use(tmp_path):
    """A packed model that has run (its layers hold engine objects in a cache) still deep-copies,
    pickles and saves, and the copies give the same logits; an empty batch keeps the input's dtype."""
    import pickle
    torch.manual_seed(0)
    model = onebit.create_model("reactnet_resnet20", num_classes=4).eval()
    packed = pack(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = packed(x)
        torch.save(packed, tmp_path / "p.pt")
        for c in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed)),
                  torch.load(tmp_path / "p.pt", weights_only=False)):
            assert torch.equal(c(x), want)
    conv = PackedBinaryConv2d.from_layer(BinaryConv2d(4, 6, 3, padding=1).eval())
    lin = PackedBinaryLinear.from_layer(BinaryLinear(8, 5).eval())
    assert conv(torch.randn(0, 4, 5, 5, dtype=torch.float64)).dtype == torch.float64
    assert lin(torch.randn(0, 8, dtype=torch.float64)).dtype == torch.float64


# --- what pack() must not replace silently (review of issue 7) ------------------------------------

FORWARD_CALLS = {BinaryConv2d: ("forward", "weight_parts", "binarize_input", "_scaled", "_conv_forward"),
                 BinaryLinear: ("forward", "weight_parts", "binarize_input", "_scaled")}


def _ste_conv(cls=BinaryConv2d):
    return cls(8, 8, 3, padding=1, input_binarizer="ste", weight_binarizer="ste")


def test_subclass_with_its_own_constructor_only_is_packed():
    """Replacing __init__ (or extra_repr) does not change what forward computes: packed as usual."""
    class Wide(BinaryConv2d):
        def __init__(self, c):
            super().__init__(c, c, 3, padding=1, input_binarizer="ste", weight_binarizer="ste")

        def extra_repr(self):
            return "wide"

    torch.manual_seed(0)
    model = nn.Sequential(Wide(8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = pack(model)
    assert isinstance(packed[0], PackedBinaryConv2d)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        close(packed(x), model(x))


@pytest.mark.parametrize("base,name", [(b, n) for b, names in FORWARD_CALLS.items() for n in names])
def test_pack_keeps_subclasses_overriding_a_method_forward_calls(base, name):
    """A subclass replacing any method forward relies on is not packed as a plain sign layer: from_layer
    raises NotPackable naming the class and the method, pack() keeps it with a PackWarning."""
    from onebit.deploy import NotPackable
    original = getattr(base, name)
    sub = type(f"My{base.__name__}", (base,), {name: lambda self, *a, **k: original(self, *a, **k)})
    layer = (_ste_conv(sub) if base is BinaryConv2d else sub(40, 5, input_binarizer="ste",
                                                           weight_binarizer="ste")).eval()
    packer = PackedBinaryConv2d if base is BinaryConv2d else PackedBinaryLinear
    with pytest.raises(NotPackable, match=f"My{base.__name__} overrides {base.__name__}'s {name}$"):
        packer.from_layer(layer)
    with pytest.warns(PackWarning, match=f"keeping '0' \\(My{base.__name__}\\) unpacked.*{name}"):
        packed = pack(nn.Sequential(layer).eval())
    assert type(packed[0]) is sub


def test_pack_keeps_subclasses_that_binarize_their_own_way():
    """The review's cases: other thresholds, scales or weights; and a method replaced on the instance."""
    class Shifted(BinaryConv2d):
        def binarize_input(self, x):
            return torch.where(x - 0.5 >= 0, 1.0, -1.0)

    class Doubled(BinaryConv2d):
        def _scaled(self, y, alpha, channel_dim):
            return super()._scaled(y, alpha, channel_dim) * 2

    class Flipped(BinaryConv2d):
        def weight_parts(self):
            wb, alpha = super().weight_parts()
            return -wb, alpha

    class LinearShifted(BinaryLinear):
        def binarize_input(self, x):
            return torch.where(x >= 1.0, 1.0, -1.0)

    torch.manual_seed(0)
    on_instance = _ste_conv()
    on_instance.binarize_input = lambda x: torch.where(x >= 0.5, 1.0, -1.0)
    x = torch.randn(2, 8, 10, 10)
    for layer in (_ste_conv(Shifted), _ste_conv(Doubled), _ste_conv(Flipped), on_instance):
        model = nn.Sequential(layer).eval()
        with pytest.warns(PackWarning, match="overrides BinaryConv2d's"):
            packed = pack(model)
        assert not isinstance(packed[0], PackedBinaryConv2d)
        with torch.no_grad():
            assert torch.equal(packed(x), model(x))
    model = nn.Sequential(LinearShifted(40, 5, input_binarizer="ste", weight_binarizer="ste")).eval()
    with pytest.warns(PackWarning, match="LinearShifted overrides BinaryLinear's binarize_input"):
        packed = pack(model)
    xl = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(packed(xl), model(xl))


def test_pack_keeps_layers_and_pools_with_hooks():
    """Forward hooks and pre-hooks of a binary layer or a pool would be lost by its replacement: it is
    kept, with a PackWarning naming it; the output stays the model's."""
    torch.manual_seed(0)
    model = nn.Sequential(_ste_conv(), _ste_conv(), nn.MaxPool2d(2), _ste_conv(), nn.AvgPool2d(2), nn.Flatten(),
                          BinaryLinear(8 * 2 * 2, 5, input_binarizer="ste", weight_binarizer="ste")).eval()
    model[0].register_forward_hook(lambda mod, inp, out: out * 0.5 + 1)
    model[1].register_forward_pre_hook(lambda mod, inp: (inp[0] - 0.3,))
    model[2].register_forward_hook(lambda mod, inp, out: out - 0.2)
    model[4].register_forward_pre_hook(lambda mod, inp: (inp[0] * 2,))
    model[6].register_forward_pre_hook(lambda mod, inp: (inp[0] + 0.4,))
    with pytest.warns(PackWarning) as rec:
        packed = pack(model)
    text = [str(w.message) for w in rec]
    assert len(text) == 5
    assert "keeping '0' (BinaryConv2d) unpacked: it has forward hooks" in text[0]
    assert "keeping '1' (BinaryConv2d) unpacked: it has forward pre-hooks" in text[1]
    assert "keeping '6' (BinaryLinear) unpacked: it has forward pre-hooks" in text[2]
    assert "keeping '2' (MaxPool2d) as it is: it has forward hooks" in text[3]
    assert "keeping '4' (AvgPool2d) as it is: it has forward pre-hooks" in text[4]
    assert [type(m) for m in packed] == [BinaryConv2d, BinaryConv2d, nn.MaxPool2d, PackedBinaryConv2d,
                                         nn.AvgPool2d, nn.Flatten, BinaryLinear]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


def test_pack_keeps_batchnorms_and_units_with_hooks():
    """fold_bn does not fold a BatchNorm with hooks (nor into a layer with hooks), and a BinaryUnit
    whose BatchNorm or activation has hooks keeps them running (no fused epilogue)."""
    torch.manual_seed(1)
    model = randomize(onebit.create_model("reactnet_resnet20"), seed=1).eval()
    model.stem[1].register_forward_hook(lambda mod, inp, out: out + 0.1)
    unit = model.stages[0][0][0]
    unit.bn.register_forward_hook(lambda mod, inp, out: out * 1.5)
    model.stages[0][0][1].act.register_forward_pre_hook(lambda mod, inp: (inp[0] - 0.05,))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    for fold_bn in (False, True):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            packed = pack(model, fold_bn=fold_bn)
        text = [str(w.message) for w in rec]
        assert [t for t in text if "not folding" in t] == ([
            "pack: not folding 'stem.1' (BatchNorm2d) into 'stem.0': 'stem.1' has forward hooks; it stays as it is "
            "(the output is correct)",
            "pack: not folding 'stages.0.0.0.bn' (BatchNorm2d) into 'stages.0.0.0.conv': 'stages.0.0.0.bn' has "
            "forward hooks; it stays as it is (the output is correct)"] if fold_bn else [])
        assert type(packed.stem[1]) is nn.BatchNorm2d and type(packed.stages[0][0][0].bn) is nn.BatchNorm2d
        assert type(packed.stages[0][0][0]).__name__ == type(packed.stages[0][0][1]).__name__ == "BinaryUnit"
        assert type(packed.stages[0][1][0]).__name__ == "PackedBinaryUnit"  # the others still fuse
        with torch.no_grad():
            out = packed(x)
        if fold_bn:
            close(out, ref)
        else:
            assert torch.equal(out, ref)


class _IndexingBlock(nn.Module):
    """A user's block that runs the layers of its Sequentials one by one, with a ReLU in between."""

    def __init__(self, whole: bool = False):
        super().__init__()
        self.whole = whole
        self.seq = nn.Sequential(_ste_conv(), nn.BatchNorm2d(8))
        self.real = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

    def forward(self, x):
        if self.whole:  # each Sequential's own forward runs its pair
            return self.real(torch.relu(self.seq(x)))
        y = self.seq[1](torch.relu(self.seq[0](x)))
        return self.real[1](torch.relu(self.real[0](y)))


def test_fold_bn_needs_the_sequentials_own_forward_to_run_the_pair():
    """fold_bn folds a (conv, BatchNorm) pair of an nn.Sequential only where the Sequential's own forward
    runs both: not when its parent calls seq[0], a ReLU, then seq[1] (that was silently wrong)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 10)
    for whole in (False, True):
        model = randomize(_IndexingBlock(whole)).eval()
        with torch.no_grad():
            ref = model(x)
        # no example input: a nested pair is not folded, with a warning that says how to fold it
        with pytest.warns(PackWarning) as rec:
            packed = pack(model, fold_bn=True)
        assert len(rec) == 2 and all("pass example_input=" in str(w.message) for w in rec)
        assert type(packed.seq[1]) is nn.BatchNorm2d and type(packed.real[1]) is nn.BatchNorm2d
        with torch.no_grad():
            assert torch.equal(packed(x), ref)
        # with one: folded where the forward pass shows the Sequential itself runs the pair
        if whole:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                packed = pack(model, fold_bn=True, example_input=x[:1])
            assert type(packed.seq[1]) is nn.Identity and type(packed.real[1]) is nn.Identity
            with torch.no_grad():
                close(packed(x), ref)
        else:
            with pytest.warns(PackWarning, match="on the example input, '(seq|real)' itself does not run") as rec:
                packed = pack(model, fold_bn=True, example_input=x[:1])
            assert len(rec) == 2
            assert type(packed.seq[1]) is nn.BatchNorm2d and type(packed.real[1]) is nn.BatchNorm2d
            with torch.no_grad():
                assert torch.equal(packed(x), ref)


def test_fold_bn_does_not_fold_a_layer_used_twice():
    """A real conv that also runs elsewhere (without the BatchNorm) is not changed by folding."""
    conv = nn.Conv2d(8, 8, 3, padding=1)
    model = randomize(nn.Sequential(conv, nn.BatchNorm2d(8), conv, _ste_conv())).eval()
    with pytest.warns(PackWarning, match="'0' is used in more than one place"):
        packed = pack(model, fold_bn=True)
    assert type(packed[1]) is nn.BatchNorm2d
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


@pytest.mark.parametrize("name,kw", [("bireal_resnet20", {}), ("reactnet_resnet20", {}), ("bireal_resnet18", {}),
                                     ("bireal_resnet20", {"in_chans": 1})])
def test_fold_bn_still_folds_every_registry_pair(name, kw):
    """Registry models are checked on a forward pass at their input size (channels from their first
    conv): their stems' and shortcuts' BatchNorms fold as before, without a warning."""
    model = onebit.create_model(name, **kw).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = pack(model, fold_bn=True)
    assert not any(type(m) is nn.BatchNorm2d for m in packed.modules())


def test_bench_times_fused_units_as_they_deploy(monkeypatch):
    """onebit bench's per-layer pass hooks leaves; a fused unit is one (its children's hooks would unfuse it)."""
    from onebit.deploy.bench import time_layers
    from onebit.models.blocks import BinaryUnit
    torch.manual_seed(0)
    packed = pack(randomize(onebit.create_model("reactnet_resnet20"), seed=3).eval(), fold_bn=True)
    unfused = []
    forward = BinaryUnit.forward
    monkeypatch.setattr(BinaryUnit, "forward", lambda self, x: unfused.append(1) or forward(self, x))
    layers = time_layers(packed, torch.randn(1, 3, 32, 32), repeats=2, warmup=1)
    assert not unfused  # every unit took its fused path while timed
    kinds = {kind for kind, _ in layers.values()}
    assert "PackedBinaryUnit" in kinds and "RPReLU" not in kinds
