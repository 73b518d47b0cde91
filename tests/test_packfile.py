"""The packed model file (onebit.deploy.save / load), int8 first/last layers, and the pack /
eval / bench commands."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torch.nn as nn

import onebit
from onebit import deploy
from onebit.cli import main as cli
from onebit.deploy import PackedBinaryConv2d, PackedFileError
from onebit.deploy import file as PF
from onebit.layers import BinaryConv2d
from onebit.models.registry import _MODELS, register_model

from test_deploy import randomize


def saved(tmp_path, name="bireal_resnet20", seed=3, **kwargs):
    torch.manual_seed(seed)
    model = randomize(onebit.create_model(name, **kwargs), seed).eval()
    path = deploy.save(model, tmp_path / f"{name}.onebit")
    return model, path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(model, path, bytes) of a small packed bireal_resnet20."""
    model, path = saved(tmp_path_factory.mktemp("small"))
    return model, path, path.read_bytes()


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    ("bireal_resnet20", {}),
    ("bireal_resnet20", {"pre_bn_act": "relu"}),  # the file's config rebuilds the ReLU: not a silent identity
    ("reactnet_resnet20", {}),
    ("binaryvit_cifar", {"embed_dims": [16, 32, 32, 64], "depths": [1, 1, 1, 1]}),
])
def test_round_trip_gives_identical_logits(tmp_path, name, kwargs):
    model, path = saved(tmp_path, name, **kwargs)
    packed = deploy.pack(model)  # save packs unfolded by default: bit-identical to the model
    loaded = deploy.load(path)
    assert not loaded.training
    assert sum(isinstance(m, deploy.PackedBinaryConv2d) for m in loaded.modules()) == \
        sum(isinstance(m, deploy.PackedBinaryConv2d) for m in packed.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), packed(x))
        assert torch.equal(loaded(x), model(x))
    info = deploy.read_info(path)
    assert info["model"] == name and info["pack"] == {"fold_bn": False, "int8_layers": []}


def test_already_packed_model_and_no_fold(tmp_path):
    torch.manual_seed(0)
    model = randomize(onebit.create_model("reactnet_resnet20"), 1).eval()
    packed = deploy.pack(model, fold_bn=False)
    path = deploy.save(packed, tmp_path / "p.onebit")  # fold_bn found by rebuilding
    assert deploy.read_info(path)["pack"]["fold_bn"] is False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(deploy.load(path)(x), packed(x))


def test_tapsum_is_derived_not_stored(small):
    model, path, _ = small
    packed = deploy.pack(model, fold_bn=True)
    assert not any(k.endswith("tapsum") for k in packed.state_dict())
    loaded = deploy.load(path)
    pairs = [(a, b) for a, b in zip(packed.modules(), loaded.modules()) if isinstance(a, PackedBinaryConv2d)]
    assert pairs and all(torch.equal(a.tapsum, b.tapsum) for a, b in pairs)


def test_file_is_standard_safetensors(small):
    from safetensors import safe_open
    model, path, _ = small
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == "onebit.packed" and meta["format_version"] == "2"
        assert json.loads(meta["model_kwargs"]) == {}
        bits = [k for k in f.keys() if k.endswith("weight_bits")]
        assert bits
    n = int.from_bytes(path.read_bytes()[:8], "little")
    assert hashlib.sha256(path.read_bytes()[8 + n:]).hexdigest() == meta["sha256_data"]


def test_rows_are_stored_without_alignment_words_and_version_1_files_still_load(tmp_path, monkeypatch):
    """Version 2 stores each conv row's reduction words only (64-channel 3x3 rows: 9 words, 16 in
    memory); a version 1 file, with the zero words, loads to the same model."""
    from safetensors import safe_open
    from onebit.deploy import file as F
    model = onebit.create_model("bireal_resnet18_cifar").eval()
    new = deploy.save(model, tmp_path / "v2.onebit")
    monkeypatch.setattr(F, "VERSION", 1)
    old = deploy.save(model, tmp_path / "v1.onebit")
    monkeypatch.undo()
    with safe_open(str(new), "pt") as f2, safe_open(str(old), "pt") as f1:
        assert f2.metadata()["format_version"] == "2" and f1.metadata()["format_version"] == "1"
        k = next(k for k in f2.keys() if k.endswith("weight_bits") and f2.get_slice(k).get_shape()[1] == 9)
        assert f1.get_slice(k).get_shape()[1] == 16
    assert new.stat().st_size < old.stat().st_size
    a, b = deploy.load(new), deploy.load(old)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), model(x)) and torch.equal(b(x), model(x))
    assert deploy.read_info(old)["format_version"] == 1 and deploy.read_info(new)["format_version"] == 2


@pytest.mark.parametrize("version", [1, 2])
def test_bits_outside_the_weights_are_refused(tmp_path, monkeypatch, version):
    """The engine counts whole words, so a weight row's unused bits must be zero: a file (checksums
    intact) with a bit past the reduction in a row's last word, or in a version 1 row's alignment
    words, would change the logits silently; the loader refuses it."""
    torch.manual_seed(0)
    packed = deploy.pack(randomize(onebit.create_model("bireal_resnet20"), 1).eval())
    monkeypatch.setattr(PF, "VERSION", version)
    good = deploy.save(packed, tmp_path / "good.onebit", name="bireal_resnet20")
    deploy.load(good)  # as written: loads
    layer = next(m for m in packed.modules() if isinstance(m, PackedBinaryConv2d) and m.in_channels % 64)
    words = layer._reduction_words()
    assert layer.weight_bits.shape[1] > words  # the row is aligned in memory
    if version == 1:
        layer.weight_bits[3, words] = 1  # an alignment word
    else:
        layer.weight_bits[3, 0] |= 1 << 62  # past the 16 or 32 channels of the first tap's word
    bad = deploy.save(packed, tmp_path / "bad.onebit", name="bireal_resnet20")
    with pytest.raises(PackedFileError, match="bits set outside its weights.*pack the model again"):
        deploy.load(bad)


def test_valid_bits_mask_the_reduction():
    from onebit.deploy.packed import _word_mask
    full = (1 << 64) - 1
    assert [int(w) for w in _word_mask(64)] == [full]
    assert [int(w) for w in _word_mask(70)] == [full, (1 << 6) - 1]
    conv = deploy.pack(nn.Sequential(BinaryConv2d(10, 4, 3, groups=2)).eval())[0]
    assert [int(w) for w in conv._valid_bits()] == [(1 << 5) - 1] * 9  # 5 channels per group, 9 taps


def test_user_model_needs_a_registry_name(tmp_path):
    def net():
        return nn.Sequential(BinaryConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 16, 4))

    torch.manual_seed(0)
    model = randomize(net()).eval()
    with pytest.raises(ValueError, match="registry name.*register_model"):
        deploy.save(model, tmp_path / "a.onebit")
    assert not (tmp_path / "a.onebit").exists()
    if "test_packfile_net" not in _MODELS:
        def test_packfile_net():
            return net()
        register_model(test_packfile_net)
    path = deploy.save(model, tmp_path / "a.onebit", name="test_packfile_net")
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(deploy.load(path)(x), deploy.pack(model)(x))
    # a name whose factory builds something else is refused at save time
    with pytest.raises(ValueError, match="does not match"):
        deploy.save(model, tmp_path / "b.onebit", name="bireal_resnet20")
    assert not (tmp_path / "b.onebit").exists()


def test_refuses_to_overwrite(tmp_path, small):
    model, _, raw = small
    path = tmp_path / "x.onebit"
    path.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="exists"):
        deploy.save(model, path)
    assert path.read_bytes() == b"keep me"
    deploy.save(model, path, force=True)
    assert path.read_bytes() == raw  # the same model packed again: the same file, byte for byte
    assert sorted(os.listdir(tmp_path)) == ["x.onebit"]  # no temporary file left behind


# --- sizes --------------------------------------------------------------------------------------

def test_bireal_resnet18_theoretical_bytes_by_hand():
    """theoretical_bytes = 1 bit per binary weight (the weights of the BinaryConv2d layers) + every other
    parameter and buffer in its own dtype: 4 bytes per float32 entry, 8 per int64 num_batches_tracked,
    counted here from named_parameters / named_buffers, not from the state dict."""
    model = onebit.create_model("bireal_resnet18").eval()
    binary_ids = {id(m.weight) for m in model.modules() if isinstance(m, BinaryConv2d)}
    assert len(binary_ids) == 16  # 4 stages x 2 blocks x 2 binary 3x3 convs
    binary = sum(p.numel() for p in model.parameters() if id(p) in binary_ids)
    real = sum(p.numel() for p in model.parameters() if id(p) not in binary_ids)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    float_buffers = sum(b.numel() for _, b in model.named_buffers() if b.dtype == torch.float32)
    counters = [b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    assert all(b.dtype == torch.int64 and b.numel() == 1 for b in counters)
    assert float_buffers + len(counters) == sum(b.numel() for b in model.buffers())  # nothing else
    # the README / docs/complexity.md split: binary 3x3 weights 64^2 9 x 4 + (64 128 + 3 x 128^2) 9 +
    # (128 256 + 3 x 256^2) 9 + (256 512 + 3 x 512^2) 9 = 10,985,472; real: stem 3 64 49 + fc 512 1000 + 1000
    # + 1x1 shortcuts (64 128 + 128 256 + 256 512) + BN affine 2 x 4800 channels = 704,040
    assert binary == 10_985_472 and real == 704_040
    assert 3 * 64 * 49 + 512 * 1000 + 1000 + (64 * 128 + 128 * 256 + 256 * 512) + 2 * 4800 == real
    # buffers: running mean and var of the 20 BatchNorms (stem, 16 in the blocks, 3 in the shortcuts),
    # 4800 channels in all
    assert float_buffers == 2 * 4800 and len(counters) == 20
    expect = binary // 8 + 4 * (real + float_buffers) + 8 * len(counters)
    assert binary % 8 == 0 and expect == 4_227_904
    assert deploy.theoretical_bytes(model) == expect
    # int8 stem and classifier: 1 byte per weight + a float32 scale per output channel instead of 4 bytes
    stem, fc = model.stem[0].weight, model.fc.weight
    assert deploy.theoretical_bytes(model, ("stem.0", "fc")) == \
        expect - 3 * (stem.numel() + fc.numel()) + 4 * (stem.shape[0] + fc.shape[0])


def test_bireal_resnet18_size_is_near_theoretical(tmp_path):
    model = onebit.create_model("bireal_resnet18").eval()
    path = deploy.save(model, tmp_path / "r18.onebit")  # unfolded: BN kept beside scale and bias
    size, theory, fp32 = path.stat().st_size, deploy.theoretical_bytes(model), deploy.float32_bytes(model)
    assert size <= 1.05 * theory, (size, theory)
    assert fp32 / size > 10  # 46.8 MB of float32 weights -> 4.3 MB
    # the int8 option stores the stem and the classifier at 1 byte per weight
    p8 = deploy.save(model, tmp_path / "r18i8.onebit", int8_first_last=True, fold_bn=True)
    assert p8.stat().st_size <= 1.05 * deploy.theoretical_bytes(model, ("stem.0", "fc"))
    assert p8.stat().st_size < 0.7 * size


# --- int8 first / last ----------------------------------------------------------------------

def test_int8_layers_dequantize_exactly():
    torch.manual_seed(0)
    lin, conv = nn.Linear(40, 7), nn.Conv2d(3, 5, 3, 2, 1)
    with torch.no_grad():
        lin.weight[3] = 0  # an all-zero row: scale 1, codes 0
    for layer, x in ((lin, torch.randn(4, 40)), (conv, torch.randn(2, 3, 9, 9))):
        q = (deploy.Int8Linear if isinstance(layer, nn.Linear) else deploy.Int8Conv2d).from_float(layer)
        view = (-1,) + (1,) * (layer.weight.dim() - 1)
        amax = layer.weight.detach().flatten(1).abs().amax(1)  # per output channel: s[f] = max|w[f]| / 127
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        assert q.weight_q.dtype == torch.int8 and torch.equal(q.weight_scale, scale)
        assert torch.equal(q.weight_q, torch.round(layer.weight.detach() / scale.view(view)).clamp(-127, 127)
                           .to(torch.int8))
        nonzero = amax > 0
        assert (q.weight_q.flatten(1).abs().amax(1)[nonzero] == 127).all()
        if not nonzero.all():
            assert (q.weight_scale[~nonzero] == 1).all() and (q.weight_q[~nonzero] == 0).all()
        w = q.weight_q.float() * q.weight_scale.view(view)
        assert ((w - layer.weight).abs() <= q.weight_scale.view(view) / 2 + 1e-7).all()
        with torch.no_grad():
            ref = layer._conv_forward(x, w, layer.bias) if isinstance(layer, nn.Conv2d) else \
                nn.functional.linear(x, w, layer.bias)
            assert torch.equal(q(x), ref)
            assert (q(x) - layer(x)).abs().max() < 0.02 * layer(x).abs().max()


def test_int8_first_last_round_trip_and_logits_close(tmp_path):
    torch.manual_seed(0)
    model = randomize(onebit.create_model("reactnet_resnet20"), 3).eval()
    path = deploy.save(model, tmp_path / "i8.onebit", int8_first_last=True)
    assert deploy.read_info(path)["pack"]["int8_layers"] == ["stem.0", "fc"]
    loaded = deploy.load(path)
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert {"Int8Conv2d", "Int8Linear"} <= kinds
    ref8 = deploy.pack(model)
    assert deploy.quantize_int8(ref8) == ["stem.0", "fc"]
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
        assert torch.equal(out, ref8(x))  # the file holds exactly the quantized pack
    # the stem's rounding flips a few binary activations downstream: close to float32, not equal
    # (relative error 0.039 on this model and batch)
    assert float((out - ref).norm() / ref.norm()) < 0.06
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.85


# --- corrupt files ------------------------------------------------------------------------------

def _split(raw: bytes):
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header: dict, data: bytes, forge: bool) -> bytes:
    """Re-serialise an edited header; ``forge`` recomputes its checksum so the structural checks
    (not the checksum) must catch the edit."""
    if forge:
        header["__metadata__"]["sha256_header"] = PF._header_hash(header)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def edit(fn, forge=True):
    def mutate(raw):
        header, data = _split(raw)
        fn(header)
        return _join(header, data, forge)
    return mutate


def _first(header, dtype=None):
    return next(k for k, v in header.items() if k != "__metadata__" and (dtype is None or v["dtype"] == dtype)
                and v["shape"] and v["shape"][0] > 1)


def _set(header, key, field, value):
    header[key][field] = value


def _flip(pos):
    def mutate(raw):
        b = bytearray(raw)
        b[pos(len(raw), int.from_bytes(raw[:8], "little"))] ^= 0x10
        return bytes(b)
    return mutate


def _insert(raw: bytes, text: bytes) -> bytes:
    """``text`` inserted at the start of the header object, the header length updated."""
    n = int.from_bytes(raw[:8], "little") + len(text)
    return n.to_bytes(8, "little") + raw[8:9] + text + raw[9:]


CORRUPTIONS = {
    "empty": (lambda raw: b"", "empty file"),
    "truncated_in_length": (lambda raw: raw[:5], "truncated"),
    "truncated_after_length": (lambda raw: raw[:8], "header length"),
    "truncated_in_header": (lambda raw: raw[:200], "header length"),
    "truncated_in_data": (lambda raw: raw[:len(raw) // 2], "header length|data region"),
    "truncated_last_byte": (lambda raw: raw[:-1], "data region"),
    "appended_bytes": (lambda raw: raw + b"\0" * 8, "data region"),
    "appended_one": (lambda raw: raw + b"x", "data region"),
    "flip_length": (_flip(lambda size, n: 2), "header length"),
    "flip_header_json": (_flip(lambda size, n: 8 + n // 2), "JSON|checksum|dtype|shape|offsets|tensor|metadata"),
    "flip_header_brace": (_flip(lambda size, n: 8), "JSON"),
    "flip_data_first": (_flip(lambda size, n: 8 + n), "data checksum"),
    "flip_data_last": (_flip(lambda size, n: size - 1), "data checksum"),
    "dtype_string": (edit(lambda h: _set(h, _first(h, "F32"), "dtype", "I32"), forge=False), "header checksum"),
    "dtype_forged": (edit(lambda h: _set(h, _first(h, "F32"), "dtype", "I32")), "do not match"),
    "dtype_unknown": (edit(lambda h: _set(h, _first(h), "dtype", "F128")), "unknown dtype"),
    "shape": (edit(lambda h: _set(h, _first(h), "shape", [h[_first(h)]["shape"][0] + 1]
                                  + h[_first(h)]["shape"][1:])), "needs"),
    "shape_swapped": (edit(lambda h: _set(h, _first(h, "F32"), "shape", [1] + h[_first(h, "F32")]["shape"])),
                      "do not match"),
    "shape_negative": (edit(lambda h: _set(h, _first(h), "shape", [-1])), "bad shape"),
    "offsets_beyond_end": (edit(lambda h: _set(h, _first(h), "data_offsets",
                                               [x + 10 ** 9 for x in h[_first(h)]["data_offsets"]])), "outside"),
    "offsets_overlap": (edit(lambda h: [_set(h, k, "data_offsets", [0, v["data_offsets"][1] - v["data_offsets"][0]])
                                        for k, v in list(h.items())[-2:]]), "overlaps|unused"),
    "offsets_not_ints": (edit(lambda h: _set(h, _first(h), "data_offsets", [0.0, 8.0])), "bad data_offsets"),
    "wrong_version": (edit(lambda h: h["__metadata__"].update(format_version="3")), "version"),
    "wrong_format": (edit(lambda h: h["__metadata__"].update(format="other")), "not an onebit packed file"),
    "no_metadata": (edit(lambda h: h.pop("__metadata__"), forge=False), "metadata"),
    "missing_checksum": (edit(lambda h: h["__metadata__"].pop("sha256_data")), "lacks sha256_data"),
    "bad_config_json": (edit(lambda h: h["__metadata__"].update(pack="{fold_bn")), "expected JSON"),
    "unknown_model": (edit(lambda h: h["__metadata__"].update(model="no_such_net")), "cannot rebuild"),
    "other_model": (edit(lambda h: h["__metadata__"].update(model="reactnet_resnet20")), "do not match"),
    "extra_tensor": (edit(lambda h: h.update(extra={"dtype": "U8", "shape": [0], "data_offsets": [0, 0]})),
                     "do not match"),
    "bad_json": (lambda raw: (9).to_bytes(8, "little") + b'{"a": [1,' + raw[17:], "JSON"),
    "duplicate_key": (lambda raw: _insert(raw, b'"a":1,"a":2,'), "duplicate key"),
    "nan_in_json": (lambda raw: _insert(raw, b'"a":NaN,'), "NaN is not allowed"),
    "huge_length": (lambda raw: (2 ** 63).to_bytes(8, "little") + raw[8:], "header length"),
    "not_packed": (lambda raw: b"PK\x03\x04" + raw[4:], "header length"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_file_raises_packed_file_error(tmp_path, small, case):
    _, _, raw = small
    mutate, message = CORRUPTIONS[case]
    bad = mutate(raw)
    assert bad != raw
    path = tmp_path / "bad.onebit"
    path.write_bytes(bad)
    with pytest.raises(PackedFileError, match=message) as e:
        deploy.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(PackedFileError, match="does not exist"):
        deploy.load(tmp_path / "nope.onebit")
    with pytest.raises(PackedFileError, match="is a directory, not a packed file") as e:
        deploy.load(tmp_path)
    assert "does not exist" not in str(e.value)
    with pytest.raises(PackedFileError, match="'/dev/null' is not a regular file"):  # it exists
        deploy.load("/dev/null")
    assert issubclass(PackedFileError, ValueError)


def _resigned_kwargs(raw: bytes, **kwargs) -> bytes:
    return edit(lambda h: h["__metadata__"].update(model_kwargs=json.dumps(kwargs)))(raw)


@pytest.mark.parametrize("classes", [10, 2_000_000, 10 ** 12])
def test_header_declaring_a_larger_model_is_refused_before_building_it(tmp_path, small, monkeypatch, classes):
    """A re-signed header whose model_kwargs describe a far larger model than the file holds: refused
    from a skeleton of meta tensors, before the real model (2e6 classes: 0.5 GB) is allocated."""
    _, _, raw = small
    path = tmp_path / "big.onebit"
    path.write_bytes(_resigned_kwargs(raw, num_classes=classes))
    if classes == 10:  # the model's own value: loads
        assert isinstance(deploy.load(path), nn.Module)
        return
    monkeypatch.setattr(PF, "build", lambda *a, **k: pytest.fail("the model was built before the check"))
    need = 4 * 65 * classes  # the classifier alone: 64 weights and a bias per class, float32
    message = (rf"model 'bireal_resnet20' with its model_kwargs holds at least \d{{{len(str(need))}}} bytes packed, "
               rf"but the file has {path.stat().st_size}: the header does not describe this file")
    with pytest.raises(PackedFileError, match=message):
        deploy.load(path)


@pytest.mark.parametrize("name,kwargs,fold_bn,int8", [
    ("reactnet_resnet20", {}, False, False),
    ("bireal_resnet18_cifar", {}, True, True),
    ("binaryvit_cifar", {"embed_dims": [16, 32, 32, 64], "depths": [1, 1, 1, 1]}, True, False),
])
def test_size_check_accepts_genuine_files(tmp_path, name, kwargs, fold_bn, int8):
    """Genuine files (folded BatchNorms are not in them, int8 layers hold bytes) pass the size check;
    the same header over a quarter of the bytes does not."""
    model = onebit.create_model(name, **kwargs).eval()
    path = deploy.save(model, tmp_path / "m.onebit", fold_bn=fold_bn, int8_first_last=int8)
    info = PF._read(path)[3]
    PF._check_model_size(str(path), info)
    with pytest.raises(PackedFileError, match="the header does not describe this file"):
        PF._check_model_size(str(path), {**info, "file_bytes": info["file_bytes"] // 4})


BAD_META = {
    "std_zero": ({"std": [0, 0, 0]}, r"meta std \[0, 0, 0\] has a value <= 0"),
    "std_inf": ({"std": [1.0, float("inf"), 1.0]}, "meta std .* is not 3 finite numbers"),
    "std_two": ({"std": [1, 1]}, r"meta std \[1, 1\] is not 3 finite numbers \(one per input channel\)"),
    "mean_text": ({"mean": "abc"}, 'meta mean "abc" is not 3 finite numbers'),
    "mean_bool": ({"mean": [True, 0, 0]}, "meta mean .* is not 3 finite numbers"),
    "class_names_int": ({"class_names": 3}, "meta class_names 3 is not a list of strings"),
    "class_names_short": ({"class_names": ["a", "b"]}, "meta class_names has 2 names for the model's 10 classes"),
    "input_size_negative": ({"input_size": [3, -1, 32]}, r"meta input_size \[3, -1, 32\] is not \[C, H, W\]"),
    "input_size_text": ({"input_size": "32"}, "meta input_size"),
    "channels": ({"input_size": [1, 32, 32]}, "meta mean .* is not 1 finite numbers"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_bad_meta_is_refused_at_load_and_at_save(tmp_path, small, case):
    model, _, raw = small
    change, message = BAD_META[case]
    meta = {"class_names": [f"c{i}" for i in range(10)], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "input_size": [3, 32, 32], **change}
    path = tmp_path / "bad.onebit"
    path.write_bytes(edit(lambda h: h["__metadata__"].update(meta=json.dumps(meta)))(raw))
    with pytest.raises(PackedFileError, match=message) as e:
        deploy.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ValueError, match=f"cannot save: ({message}|the meta is not JSON-serialisable)"):
        deploy.save(model, tmp_path / "new.onebit", meta=meta)
    assert not (tmp_path / "new.onebit").exists()


def test_cli_eval_json_has_no_nan(tmp_path, capsys):
    """NaN logits (a NaN weight in a genuine file) give a NaN loss: the JSON says null, never NaN."""
    from onebit.data.sample import CIFAR10_CLASSES
    model = onebit.create_model("bireal_resnet20").eval()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    meta = {"class_names": list(CIFAR10_CLASSES), "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "input_size": [3, 32, 32]}
    path = deploy.save(model, tmp_path / "nan.onebit", meta=meta)
    assert cli(["eval", str(path), "--data", "sample", "--json"]) == 0
    res = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert res["loss"] is None and res["n"] == 1000


def test_sniff(tmp_path, small):
    _, path, raw = small
    assert PF.sniff(path) == "packed" and PF.is_packed_file(path)
    ck = tmp_path / "c.pt"
    torch.save({"model": {}}, ck)
    assert PF.sniff(ck) == "checkpoint"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(raw)
    assert PF.sniff(renamed) == "packed"  # by its header, not its name


# --- command line -------------------------------------------------------------------------------

def _checkpoint(tmp_path):
    """A bireal_resnet20 checkpoint as training writes it (random but non-trivial weights)."""
    from onebit.data.sample import CIFAR10_CLASSES
    from onebit.train.checkpoint import save_atomic
    torch.manual_seed(0)
    model = randomize(onebit.create_model("bireal_resnet20"), 2).eval()
    meta = {"model": "bireal_resnet20", "model_kwargs": {}, "class_names": list(CIFAR10_CLASSES),
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616], "input_size": [3, 32, 32],
            "progress": 1.0}
    path = tmp_path / "best.pt"
    save_atomic({"model": model.state_dict(), "meta": meta}, path)
    return path


def test_cli_pack_and_eval_packed_file(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    out = tmp_path / "m.packed.safetensors"
    assert cli(["pack", str(ck), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["file_bytes"] == out.stat().st_size and res["compression_vs_float32"] > 8  # 16-channel layers waste bits
    assert cli(["eval", str(ck), "--data", "sample", "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert cli(["eval", str(out), "--data", "sample", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == set(ref) and got["n"] == ref["n"] == 1000
    assert abs(got["top1"] - ref["top1"]) <= 0.5  # folding BN moves rounding by ~1e-7: a sign may flip
    exact = tmp_path / "exact.onebit"  # unfolded, the engine predicts exactly what the model does
    assert cli(["pack", str(ck), "--out", str(exact), "--no-fold-bn", "--json"]) == 0
    capsys.readouterr()
    assert cli(["eval", str(exact), "--data", "sample", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {k: got[k] for k in ("top1", "top5", "n", "per_class")} == {k: ref[k] for k in ("top1", "top5", "n", "per_class")}
    # the file is found by its header whatever its name (a small image folder: quicker than the sample)
    from test_train import make_folder
    make_folder(tmp_path / "imgs", ["cat", "dog"])
    other = tmp_path / "renamed.bin"
    other.write_bytes(out.read_bytes())
    assert cli(["eval", str(other), "--data", str(tmp_path / "imgs"), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6
    # refuses to overwrite; --force, --no-fold-bn and --int8-first-last with --data
    assert cli(["pack", str(ck), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli(["pack", str(ck), "--out", str(out), "--force", "--no-fold-bn", "--int8-first-last",
                "--data", str(tmp_path / "imgs"), "--split", "test"]) == 0
    text = capsys.readouterr().out
    assert "top-1 on" in text and "int8 stem.0, fc" in text
    # the reload check and the difference from float32 are two separate lines
    same = [line for line in text.splitlines() if "identical" in line]
    assert len(same) == 1 and "float32" not in same[0]
    assert "packed vs float32 model: max |logit diff|" in text and "(int8 first/last layers change" in text
    assert deploy.read_info(out)["pack"] == {"fold_bn": False, "int8_layers": ["stem.0", "fc"]}


def test_cli_pack_registry_name_and_errors(tmp_path, capsys):
    out = tmp_path / "r.onebit"
    assert cli(["pack", "reactnet_resnet20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "size on disk" in text and "theoretical" in text and "verified" in text
    assert cli(["pack", "no_such_model", "--out", str(tmp_path / "x.onebit")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli(["pack", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onebit")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["pack", str(out), "--out", str(tmp_path / "x.onebit")]) == 2
    assert "already a packed file" in capsys.readouterr().err
    # eval: a packed file without class names, a missing file, a corrupt file
    assert cli(["eval", str(out), "--data", "sample"]) == 2
    assert "class_names" in capsys.readouterr().err
    assert cli(["eval", str(tmp_path / "missing.onebit"), "--data", "sample"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.onebit"
    bad.write_bytes(out.read_bytes()[:-3])
    assert cli(["eval", str(bad), "--data", "sample"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onebit: error:") and "data region" in err and err.count("\n") == 1
    assert not (tmp_path / "x.onebit").exists()
    # an --out in a folder that does not exist, and a bad --data: refused before the file is written
    assert cli(["pack", "reactnet_resnet20", "--out", str(tmp_path / "no" / "x.onebit")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["pack", "zoo:reste_resnet20_cifar10", "--out", str(tmp_path / "x.onebit"),
                "--data", str(tmp_path / "nodata")]) == 2
    assert "nodata" in capsys.readouterr().err
    assert not (tmp_path / "x.onebit").exists()


def test_cli_bench_quick(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli(["bench", "bireal_resnet20", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    run = res["runs"][0]
    assert run["batch"] == 1 and run["threads"] == 1 and run["packed_ms"] > 0 and run["float32_ms"] > 0
    assert res["twin"] == "resnet20" and run["resnet20_ms"] > 0
    assert any(v[0] == "PackedBinaryUnit" for v in run["layers"]["packed"].values())  # fused, as deployed
    assert out.with_suffix(".md").is_file() and "speed-up" in text
    assert res["fold_bn"] is True
    kept = out.read_text()  # a rerun into the same file is refused unless --force
    assert cli(["bench", "bireal_resnet20", "--quick", "--no-layers", "--unfolded", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == kept
    assert cli(["bench", "bireal_resnet20", "--quick", "--no-layers", "--unfolded", "--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["fold_bn"] is False
    # a packed file and the layer mode
    packed = tmp_path / "r.onebit"
    deploy.save(onebit.create_model("bireal_resnet20").eval(), packed)
    assert cli(["bench", str(packed), "--quick", "--no-layers", "--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["model"] == "bireal_resnet20"
    assert cli(["bench", "--layer", "conv", "--shape", "16,16,8,8", "--quick", "--out", str(out), "--force"]) == 0
    assert cli(["bench", "--layer", "linear", "--shape", "4,128,32", "--quick", "--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["runs"][0]["packed_ms"] > 0
    capsys.readouterr()
    assert cli(["bench", "--layer", "conv", "--quick"]) == 2
    assert "--shape" in capsys.readouterr().err
    assert cli(["bench", "--layer", "conv", "--shape", "16,16", "--quick"]) == 2
    assert "C_IN,C_OUT,H,W" in capsys.readouterr().err
    assert cli(["bench", str(tmp_path / "none.onebit"), "--quick"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_eval_help_shows_defaults(capsys):
    assert cli(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "(default: val)" in text and "(default: 256)" in text


def test_cli_eval_png_without_matplotlib_fails_before_evaluating(tmp_path, capsys, monkeypatch):
    import importlib
    import sys
    ev = importlib.import_module("onebit.train.evaluate")  # the module: onebit.train.evaluate is the function
    ck = _checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluated before the matplotlib check"))
    assert cli(["eval", str(ck), "--data", "sample", "--png", str(tmp_path / "cm.png")]) == 2
    assert capsys.readouterr().err == "onebit: error: plots need matplotlib: pip install 'onebit[analysis]'\n"
    assert cli(["capability", "bireal_resnet34", "--png", str(tmp_path / "cap.png")]) == 2  # also before its work
    assert "plots need matplotlib" in capsys.readouterr().err


def test_cli_closed_pipe_exits_quietly():
    """`onebit list-models | head -1`: the reader goes away; no 'Broken pipe' error line."""
    import subprocess
    import sys
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "onebit.cli", "list-models"], stdout=w, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    finally:
        os.close(w)
    assert done.stderr.decode() == "" and done.returncode == 1


def test_bench_zoo_model_keeps_its_real_twin(tmp_path, capsys):
    """The real twin takes none of a zoo model's binarizer options: it is built without them
    (recorded as twin_kwargs), not dropped from the table."""
    out = tmp_path / "bench.json"
    assert cli(["bench", "zoo:reste_resnet20_cifar10", "--quick", "--no-layers", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["twin"] == "resnet20" and res["twin_kwargs"] == {"num_classes": 10} and res["runs"][0]["resnet20_ms"] > 0
    assert "input_binarizer" in res["model_kwargs"]
