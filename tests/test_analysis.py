"""Complexity and representational capability against the papers (reference.md sections 3, 6).

Paper values: 002 Table 6 (binary ResNet-18: FLOPs 1.373e8 conv + 0.005e8 FC, BOPs 1.676e9,
OPs 1.640e8, BN FLOPs 0.025e8, OPs+ 1.665e8), 004 Table 2 (Bi-RealNet-18: BOPs 1.68e9,
FLOPs 1.39e8, OPs 1.65e8; Bi-RealNet-34: 3.53e9, 1.39e8, 1.94e8), 000 Table 4 (ResNet-34
OPs 1.93e8), 003 Table 1 (float ResNet-18: 1.82 GMac), 000 Appendix B (capabilities).
"""
import copy
import json
import warnings

import pytest
import torch
import torch.nn as nn

import onebit
from onebit.analysis import (Counter, capability, complexity, deit_capability, per_element_flops,
                             register_counter)
from onebit.analysis.complexity import COUNTERS
from onebit.layers import BinaryConv2d, BinaryLinear


@pytest.fixture(scope="module")
def r18():
    return complexity(onebit.create_model("bireal_resnet18"))


@pytest.fixture(scope="module")
def r34():
    return complexity(onebit.create_model("bireal_resnet34"))


def rel(a, b):
    return abs(a - b) / b


def rows(report, pred):
    return [r for r in report.layers if pred(r)]


# --- complexity: binary ImageNet ResNet-18 ------------------------------------------------

def test_bireal18_exact_recount(r18):
    """Exact values of the re-count in reference.md section 6 (to 5 significant digits)."""
    t = r18.total
    assert t["bops"] == 1_676_279_808                      # 1.6763e9
    assert t["flops"] == 137_793_536                       # 1.3779e8
    assert t["ops"] == pytest.approx(1.63985e8, rel=1e-5)  # = 1,676,279,808 / 64 + 137,793,536
    assert t["bn_flops"] == 2_483_712                      # 0.0248e8 BN output elements
    assert t["ops_plus"] == t["ops"] + t["bn_flops"]       # 1.6647e8
    assert t["macs"] == t["bops"] + t["flops"]


def test_bireal18_flops_breakdown_002_table6(r18):
    """FLOPs = stem 1.1801e8 + down-sampling 1x1 convs 0.1927e8 + fc 0.0051e8 (to 4 digits)."""
    stem = sum(r["flops"] for r in rows(r18, lambda r: r["name"].startswith("stem")))
    down = sum(r["flops"] for r in rows(r18, lambda r: ".shortcut" in r["name"]))
    fc = sum(r["flops"] for r in rows(r18, lambda r: r["name"] == "fc"))
    assert stem == 118_013_952 and round(stem / 1e8, 4) == 1.1801   # 112*112*64 * 3*7*7
    assert round(down / 1e8, 4) == 0.1927                           # 3 avgpool + 1x1 conv shortcuts
    assert fc == 512_000                                            # 0.0051e8
    assert stem + down + fc == r18.total["flops"]
    assert rel(stem + down, 1.373e8) < 0.001                        # 002 Table 6 "conv FLOPs"


def test_bireal18_within_1pct_of_002_table6(r18):
    """002 Table 6 (3-4 digits): BOPs 1.676e9, OPs 1.640e8, BN 0.025e8, OPs+ 1.665e8 -- 1%."""
    t = r18.total
    assert rel(t["bops"], 1.676e9) < 0.01
    assert rel(t["ops"], 1.640e8) < 0.01
    assert rel(t["bn_flops"], 0.025e8) < 0.01
    assert rel(t["ops_plus"], 1.665e8) < 0.01


def test_bireal18_within_3pct_of_004_table2(r18):
    """004 Table 2 rounds to BOPs 1.68e9, FLOPs 1.39e8, OPs 1.65e8 -- 3%."""
    t = r18.total
    assert rel(t["bops"], 1.68e9) < 0.03
    assert rel(t["flops"], 1.39e8) < 0.03
    assert rel(t["ops"], 1.65e8) < 0.03


def test_bireal18_parameters_and_memory(r18):
    """Binary params = the 3x3 block convs (2 per block, 8 blocks); everything else fp32."""
    t = r18.total
    convs = rows(r18, lambda r: r["type"] == "BinaryConv2d")
    assert len(convs) == 16 and all(r["params_real"] == 0 for r in convs)
    # 3x3 convs: 4 of 64->64, 128 (64->128 + 3 of 128->128), 256, 512 likewise
    binary = 9 * (4 * 64 * 64 + 64 * 128 + 3 * 128 * 128 + 128 * 256 + 3 * 256 * 256 + 256 * 512 + 3 * 512 * 512)
    assert t["params_binary"] == sum(r["params_binary"] for r in convs) == binary == 10_985_472
    assert t["params"] == 11_689_512  # torchvision resnet18
    assert t["memory_bits"] == t["params_binary"] + 32 * t["params_real"]  # exact
    assert t["memory_bytes"] == t["memory_bits"] / 8
    assert t["memory_bytes"] / 1e6 == pytest.approx(4.19, abs=0.01)  # LCE Bi-RealNet-18: 4.2 MB
    assert t["compression"] == pytest.approx(32 * t["params"] / t["memory_bits"])


# --- complexity: ResNet-34 and the float ResNet-18 ----------------------------------------

def test_bireal34_within_1pct_of_papers(r34):
    """Re-count: BOPs 3.5260e9, FLOPs 1.3779e8, OPs 1.9289e8, 21,797,672 params; papers (004
    Table 2, 000 Table 4): 3.53e9, 1.39e8, 1.93e8/1.94e8, 21.8 M -- 1% (FLOPs 1%: 1.378 vs 1.39)."""
    t = r34.total
    assert round(t["bops"] / 1e9, 4) == 3.5260
    assert t["flops"] == 137_793_536
    assert round(t["ops"] / 1e8, 4) == 1.9289
    assert t["params"] == 21_797_672
    assert t["memory_bits"] == t["params_binary"] + 32 * t["params_real"]
    assert rel(t["bops"], 3.53e9) < 0.01 and rel(t["flops"], 1.39e8) < 0.01 and rel(t["ops"], 1.93e8) < 0.01


def test_fp_resnet18_all_macs_are_flops():
    """003 Table 1: ResNet-18 1.82 GMac (its 11.18 M params are the 10-class head's: the ImageNet net has
    11,689,512), BOPs 0; MACs within 0.5%."""
    t = complexity(onebit.create_model("resnet18")).total
    assert t["bops"] == 0 and t["params_binary"] == 0
    assert t["flops"] == t["macs"] == 1_814_073_344
    assert rel(t["macs"], 1.82e9) < 0.005
    assert t["ops"] == t["flops"]
    assert t["memory_bits"] == 32 * t["params"] and t["compression"] == 1.0


# --- complexity: conventions --------------------------------------------------------------

def test_binary_weights_on_real_inputs_count_as_flops():
    """A binary stem (binary weights, real pixels) is 1 bit per weight but its MACs are FLOPs."""
    m = onebit.create_model("bireal_resnet20", binary_stem=True)
    rep = complexity(m, input_size=(3, 32, 32))
    stem = rows(rep, lambda r: r["name"] == "stem.0")[0]
    assert stem["type"] == "BinaryConv2d" and stem["params_binary"] == 3 * 3 * 3 * 16
    assert stem["flops"] == 32 * 32 * 16 * 27 and stem["bops"] == 0
    assert stem["memory_bits"] == 3 * 3 * 3 * 16


def test_conv_and_linear_mac_formulas_and_groups():
    net = nn.Sequential(BinaryConv2d(8, 16, 3, padding=1, groups=4, bias=True),  # binary in and weights
                        nn.Conv2d(16, 4, 1, stride=2), nn.Flatten(),
                        BinaryLinear(4 * 3 * 3, 5, input_binarizer=None),    # binary weights, real inputs
                        nn.Linear(5, 2))
    rep = complexity(net, input_size=(8, 5, 5))
    conv, pw, _, bl, fc = rep.layers
    assert conv["bops"] == 16 * 5 * 5 * (8 // 4) * 9 and conv["flops"] == 0      # out * in/groups * k*k
    assert conv["params_binary"] == 16 * 2 * 9 and conv["params_real"] == 16     # the bias is real
    assert conv["memory_bits"] == 16 * 2 * 9 + 32 * 16
    assert pw["flops"] == 4 * 3 * 3 * 16 and pw["output_shape"] == [1, 4, 3, 3]
    assert bl["flops"] == 5 * 36 and bl["bops"] == 0
    assert fc["flops"] == 2 * 5


def test_bn_flops_option_and_training_mode_restored():
    m = onebit.create_model("bireal_resnet20").train()
    on, off = complexity(m, (3, 32, 32)), complexity(m, (3, 32, 32), bn_flops=False)
    assert m.training
    assert on.total["bn_flops"] > 0 and off.total["bn_flops"] == 0
    assert off.total["ops_plus"] == off.total["ops"] == on.total["ops"]
    assert on.total["ops_plus"] == on.total["ops"] + on.total["bn_flops"]


def test_reactnet_parts_are_known_and_real():
    """RSign thresholds (inside the binary conv) and RPReLU are real params, 0 extra ops, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = complexity(onebit.create_model("reactnet_resnet20"), (3, 32, 32))
    conv = rows(rep, lambda r: r["name"] == "stages.0.0.0.conv")[0]
    assert conv["params_binary"] == 16 * 16 * 9 and conv["params_real"] == 16  # RSign shift
    act = rows(rep, lambda r: r["name"] == "stages.0.0.0.act")[0]
    assert act["type"] == "RPReLU" and act["params_real"] == 3 * 16 and act["flops"] == 0


class Scale(nn.Module):  # an unknown leaf with a parameter
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.gamma


def test_unknown_leaf_with_params_warns_and_counts_real():
    net = nn.Sequential(nn.Linear(3, 4), Scale(), nn.ReLU(), nn.Identity())
    with pytest.warns(UserWarning, match=r"no counter for Scale \(1\)"):
        rep = complexity(net, input_size=(3,))
    assert rep.total["params_real"] == 3 * 4 + 4 + 4
    assert rep.layers[1]["params_real"] == 4 and rep.layers[1]["flops"] == 0
    with warnings.catch_warnings():  # parameter-free unknown leaves: silent zeros
        warnings.simplefilter("error")
        complexity(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()), (1, 4, 4))


def test_extensible_counters():
    """Per-call counters (pooling as one FLOP per element, an option for BinaryViT) and a
    container counter that counts only its own products while its children are visited."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2))
    rep = complexity(net, (1, 4, 4), counters={nn.AvgPool2d: per_element_flops})
    assert rep.layers[1]["flops"] == 2 * 2 * 2
    assert complexity(net, (1, 4, 4)).layers[1]["flops"] == 0  # default unchanged

    class Attn(nn.Module):  # products counted as BOPs by its own counter
        def __init__(self):
            super().__init__()
            self.qkv = BinaryLinear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    def attn_products(m, inputs, out):
        n, d = out.shape[-2:]
        return {"bops": 2 * n * n * d}  # Q K^T and P V

    try:
        register_counter(Attn, container=True)(attn_products)
        assert COUNTERS[Attn] == Counter(attn_products, True)
        rep = complexity(Attn(), input_size=(5, 8))
    finally:
        del COUNTERS[Attn]
    names = [r["name"] for r in rep.layers]
    assert names == ["", "qkv"]
    assert rep.layers[0]["bops"] == 2 * 5 * 5 * 8 and rep.layers[1]["bops"] == 5 * 24 * 8
    assert rep.total["params_binary"] == 24 * 8


def test_report_to_dict_and_table(r18):
    d = r18.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d["layers"][0]) == {"name", "type", "params_binary", "params_real", "memory_bits", "macs",
                                   "flops", "bops", "bn_flops", "output_shape"}
    assert {"ops", "ops_plus", "memory_bytes", "compression", "params"} <= set(d["total"])
    text = r18.table()
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["name", "type", "output_shape"]
    assert any(l.startswith("stages.0.0.0.conv") and "115,605,504" in l for l in lines)
    assert any(l.startswith("total") and "1,676,279,808" in l for l in lines)
    assert "OPs 1.6399e+08" in text and "OPs+ 1.6647e+08" in text
    assert len({len(l) for l in lines[:len(r18.layers) + 4]}) == 1  # aligned columns
    assert "4.19 MB deployed" in text
    short = r18.table(hide_empty=True)
    assert "Identity" not in short and "MaxPool2d" not in short and "stem.0" in short


# --- representational capability (000 Appendix B) ----------------------------------------

def test_capability_resnet34_appendix_b():
    r = capability(onebit.create_model("bireal_resnet34"))
    # ((((18,742 + 576*3)*4 + 1,152*4)*4 + 2,304*6)*4 + 4,608*3)*49
    assert r["total"] == 71_193_472
    assert r["per_layer"][0]["value_after"] == 18_742  # 7*7*3*255 = 37,485 -> 37,485 // 2
    after_multiply = [e["value_after"] for e in r["per_layer"] if e["op"] == "multiply"]
    assert after_multiply == [81_880, 345_952, 1_439_104, 71_193_472]
    adds = [e["contribution"] for e in r["per_layer"] if e["op"] == "add"]
    assert adds == [576] * 3 + [1_152] * 4 + [2_304] * 6 + [4_608] * 3  # one 3x3 layer per block
    assert r["per_layer"][-1]["factor"] == 49


def test_capability_bireal18_same_rule():
    r = capability(onebit.create_model("bireal_resnet18"))
    # 18,742 + 576*2 = 19,894;  *4 = 79,576;  + 1,152*2 = 81,880;  *4 = 327,520;
    # + 2,304*2 = 332,128;  *4 = 1,328,512;  + 4,608*2 = 1,337,728;  *49 = 65,548,672
    assert r["total"] == ((((18_742 + 576 * 2) * 4 + 1_152 * 2) * 4 + 2_304 * 2) * 4 + 4_608 * 2) * 49
    assert r["total"] == 65_548_672


def test_capability_cifar_defaults_and_zeropad():
    # CIFAR ResNet-18 (avg-pool shortcut), 32x32 -> 4x4 final map; stem 3*3*3*255 // 2 = 3,442:
    # 3,442 + 576*2 = 4,594; *4 = 18,376; + 2,304 = 20,680; *4 = 82,720; + 4,608 = 87,328;
    # *4 = 349,312; + 9,216 = 358,528; *16 = 5,736,448
    assert capability(onebit.create_model("bireal_resnet18_cifar"))["total"] == 5_736_448
    # ResNet-20 with zero-pad shortcuts: strided subsampling aggregates nothing (x1, documented):
    # 3,442 + 144*3 = 3,874; + 288*3 = 4,738; + 576*3 = 6,466; *8*8 = 413,824
    r = capability(onebit.create_model("bireal_resnet20"))
    assert r["total"] == 413_824 and r["input_size"] == [3, 32, 32]
    assert [e["factor"] for e in r["per_layer"] if e["op"] == "multiply"] == [1, 1, 64]


def test_capability_first_layer_bits():
    r = capability(onebit.create_model("bireal_resnet18"), first_layer_bits=4)
    assert r["per_layer"][0]["value_after"] == 7 * 7 * 3 * 15 // 2


def test_capability_rejects_fp_and_unknown_models():
    with pytest.raises(ValueError, match="full-precision"):
        capability(onebit.create_model("resnet18"))
    with pytest.raises(TypeError, match="no representational-capability rule"):
        capability(nn.Linear(2, 2))


def test_deit_capability_formula_and_paper_total():
    # (384*4 + 196 + 4*384*2)*12 + 97,920 = 155,568 by the printed formula (16*16*3*255 // 2 = 97,920)
    assert deit_capability()["total"] == (384 * 4 + 196 + 4 * 384 * 2) * 12 + 97_920 == 155_568
    # the paper's stated total (000 Table 2) equals the formula without the 196 P V term
    assert deit_capability(omit_attention=True)["total"] == 153_216
    assert deit_capability()["per_layer"][0]["value_after"] == 97_920


def test_capability_of_binaryvit_models_by_hand():
    """Sec. 3.4's rule stage by stage on a two-stage pyramid (8x8 grid, widths 8 and 16, MLP ratio 2,
    R = 2 then 1, global average pooling), and the DeiT-S model against the printed formula."""
    from onebit.models.binaryvit import BinaryViT
    m = BinaryViT(img_size=32, patch_size=4, embed_dims=(8, 16), depths=(1, 1), heads=(1, 1), mlp_ratios=(2, 2),
                  sr_ratios=(2, 1), pool="gap", num_classes=3)
    first = 4 * 4 * 3 * 255 // 2                     # real 4x4 patch embedding, 8-bit input
    stage0 = 4 * 8 + (8 // 2) * (8 // 2) + 2 * 16    # q, k, v, proj; P V over N / R^2 keys; two FFN layers
    stage1 = 4 * 16 + 4 * 4 + 2 * 32
    assert capability(m)["total"] == ((first + stage0) * 4 + stage1) * 16 == 399_104
    assert capability(onebit.create_model("binary_deit_s"))["total"] == 155_568


def test_cli_summary_and_capability_json(capsys):
    import json
    from onebit.cli import main as cli
    assert cli(["summary", "bireal_resnet18", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["input_size"] == [3, 224, 224] and abs(res["total"]["bops"] - 1.676e9) / 1.676e9 < 0.01
    assert cli(["capability", "bireal_resnet34", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["total"] == 71_193_472 and res["per_layer"]
    assert cli(["summary", "resnet20", "--input-size", "3,x,32"]) == 2
    assert "--input-size" in capsys.readouterr().err


def test_landscape_directions_and_centre():
    """Filter normalisation (each direction filter has the norm of its weight filter, 1-D
    parameters do not move), the loss at the grid centre (odd resolution: a = b = 0) is the model's
    own cross-entropy, and the weights are restored afterwards."""
    import torch.nn.functional as F
    from onebit.analysis.landscape import _directions, loss_landscape
    torch.manual_seed(0)
    m = onebit.create_model("bireal_resnet20", num_classes=4).eval()
    d = _directions(m, torch.Generator().manual_seed(1))
    for p, u in zip(m.parameters(), d):
        if p.dim() <= 1:
            assert not u.any()
        else:
            assert torch.allclose(u.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    res = loss_landscape(m, [(x[:3], y[:3]), (x[3:], y[3:])], resolution=3, span=0.5, progress=False)
    with torch.no_grad():
        assert res["loss"][1][1] == pytest.approx(F.cross_entropy(m(x), y).item(), rel=1e-5)
    assert res["loss"][0][0] != pytest.approx(res["loss"][1][1], rel=1e-6)  # the corners moved
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    # grid points off the centre, recomputed here: two directions drawn from one generator seeded with
    # `seed` (default 0), d1 then d2, each a randn per parameter of 2+ dimensions in parameters() order
    # (1-D parameters: no draw, no move), each filter (output channel) rescaled to the norm of the same
    # filter of the weights; grid[i][j] is the loss at theta0 + alpha_i d1 + beta_j d2,
    # alpha = beta = linspace(-span, span, resolution) = (-0.5, 0, 0.5)
    assert res["alpha"] == res["beta"] == [-0.5, 0.0, 0.5]
    g = torch.Generator().manual_seed(0)
    params = list(m.parameters())

    def direction():
        out = []
        for p in params:
            if p.dim() <= 1:
                out.append(torch.zeros_like(p))
                continue
            r = torch.randn(p.shape, generator=g)
            f = [r[k] * (p[k].detach().norm() / r[k].norm()) for k in range(p.shape[0])]  # filter by filter
            out.append(torch.stack(f))
        return out

    d1, d2 = direction(), direction()
    moved = copy.deepcopy(m).eval()
    for (i, j) in ((0, 0), (0, 2), (2, 1)):  # a corner, and two points that tell d1 from d2 and the signs
        a, b = res["alpha"][i], res["beta"][j]
        with torch.no_grad():
            for q, p0, u, v in zip(moved.parameters(), params, d1, d2):
                q.copy_(p0 + a * u + b * v)
            want = F.cross_entropy(moved(x), y).item()
        assert res["loss"][i][j] == pytest.approx(want, rel=1e-5), (i, j)
    assert res["loss"][0][2] != pytest.approx(res["loss"][2][0], rel=1e-4)  # the two directions differ


def test_cli_landscape_writes_pngs_and_grid(tmp_path, capsys):
    import json
    pytest.importorskip("matplotlib")
    import torch
    from onebit.cli import main as cli
    from onebit.train.checkpoint import save_atomic
    m = onebit.create_model("bireal_resnet20")
    from onebit.data.sample import CIFAR10_CLASSES
    meta = {"model": "bireal_resnet20", "model_kwargs": {}, "class_names": list(CIFAR10_CLASSES),
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [3, 32, 32], "progress": 1.0}
    save_atomic({"model": m.state_dict(), "meta": meta}, tmp_path / "m.pt")
    torch.manual_seed(0)
    assert cli(["landscape", str(tmp_path / "m.pt"), "--data", "sample", "--out", str(tmp_path / "ls"),
                "--resolution", "3", "--batches", "1", "--batch-size", "16"]) == 0
    grid = json.loads((tmp_path / "ls" / "grid.json").read_text())
    assert len(grid["loss"]) == 3 and grid["images"] == 16
    for f in ("contour.png", "surface.png"):
        assert (tmp_path / "ls" / f).read_bytes()[:4] == b"\x89PNG"
