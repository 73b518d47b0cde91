"""Tests of onebit.data: folders, splits, CIFAR pickles, the sample, transforms, the loader."""

import pickle
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from onebit.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayDataset,
    BatchLoader,
    CenterCrop,
    Compose,
    DataError,
    Normalize,
    RandAugment,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    build_dataset,
    cifar_train_transform,
    cutmix,
    holdout_split,
    load_cifar,
    load_image_folder,
    load_sample,
    mixup,
    synthetic_dataset,
)
from onebit.data import cifar as cifar_module
from onebit.data.transforms import RAND_AUGMENT_OPS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- image folders

def write_image(path, colour, size=(8, 6), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    """ROOT/train/{cat,dog} (PNG and JPEG, 8x6) and ROOT/val/{cat,dog}."""
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            write_image(tmp_path / split / "cat" / f"{i}.png", (250, 0, 0))
            write_image(tmp_path / split / "dog" / f"{i}.jpg", (0, 0, 250))
    return tmp_path


def test_folder_loads_both_formats_stacked(folder):
    ds = load_image_folder(folder, "train")
    assert ds.class_names == ["cat", "dog"]
    assert ds.is_stacked and ds.images.shape == (6, 6, 8, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert (ds.images[0] == [250, 0, 0]).all()  # PNG is lossless
    assert abs(int(ds.images[3, 3, 3, 2]) - 250) <= 3  # JPEG nearly so


def test_folder_mixed_sizes_kept_as_list(folder):
    write_image(folder / "train" / "cat" / "big.png", (9, 9, 9), size=(5, 11))
    ds = load_image_folder(folder, "train")
    assert not ds.is_stacked and len(ds) == 7
    assert ds.images[3].shape == (11, 5, 3)  # after 0.png 1.png 2.png
    assert {im.shape for i, im in enumerate(ds.images) if i != 3} == {(6, 8, 3)}


def test_folder_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "train" / "a" / "g.png"
    path.parent.mkdir(parents=True)
    Image.new("L", (4, 4), 77).save(path)
    ds = load_image_folder(tmp_path, "train")
    assert ds.images.shape == (1, 4, 4, 3) and (ds.images == 77).all()


def test_folder_classes_matched_by_name(folder):
    ds = load_image_folder(folder, "train", class_names=["bird", "dog", "cat"])
    assert ds.class_names == ["bird", "dog", "cat"]
    assert ds.labels.tolist() == [2, 2, 2, 1, 1, 1]  # missing 'bird' is fine
    with pytest.raises(DataError, match="'dog'"):
        load_image_folder(folder, "train", class_names=["cat", "bird"])


def test_unreadable_image_names_the_file(folder):
    (folder / "train" / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "train" / "dog" / "notes.txt").write_text("not an image extension: skipped")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_folder(folder, "train")
    (folder / "train" / "dog" / "broken.jpg").unlink()  # the .txt alone: skipped, not an error
    assert len(load_image_folder(folder, "train")) == 6


def test_wrong_layout_says_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"\(it is empty\).*<class name>"):
        load_image_folder(tmp_path, "train")
    with pytest.raises(DataError, match=r"\(it does not exist\)"):
        load_image_folder(tmp_path / "nowhere", "train")
    write_image(tmp_path / "loose.png", (1, 2, 3))  # images straight in ROOT: named, not called empty
    with pytest.raises(DataError, match=r"\(it holds files but no folders \(loose.png\)\)"):
        load_image_folder(tmp_path, "train")
    (tmp_path / "loose.png").unlink()
    write_image(tmp_path / "train" / "flat.png", (1, 2, 3))  # images not in class folders
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path, "train")


def test_train_per_class_keeps_a_seeded_subset_and_the_same_validation():
    spec = {"name": "synthetic", "n": 600, "val_n": 100, "num_classes": 5, "seed": 3,
            "val_split": {"per_class": 20, "seed": 1}}
    train, val = build_dataset(spec)
    sub, val2 = build_dataset({**spec, "train_per_class": 30})
    assert np.array_equal(val.labels, val2.labels) and np.array_equal(val.images, val2.images)
    assert sub.class_counts().tolist() == [30] * 5
    # every kept image is one of the training images, drawn the same way each time
    again, _ = build_dataset({**spec, "train_per_class": 30})
    assert np.array_equal(again.images, sub.images)
    rows = {im.tobytes() for im in train.images}
    assert all(im.tobytes() in rows for im in sub.images)
    for bad in (0, -1, 2.5, True, 10 ** 6):
        with pytest.raises(DataError, match="train_per_class"):
            build_dataset({**spec, "train_per_class": bad})


def test_build_dataset_folder(folder):
    train, val = build_dataset({"name": "folder", "root": str(folder)})
    assert (len(train), len(val)) == (6, 2) and val.class_names == ["cat", "dog"]
    train, val = build_dataset({"name": "folder", "root": folder, "val_split": {"per_class": 1, "seed": 0}})
    assert (len(train), len(val)) == (4, 2) and val.class_counts().tolist() == [1, 1]
    with pytest.raises(DataError, match=r"class 'cat' \(0\) has only 3 images, cannot hold out 5 of them"):
        build_dataset({"name": "folder", "root": folder, "val_split": {"per_class": 5, "seed": 0}})


# ----------------------------------------------------------------------------- holdout split

def test_holdout_split_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [30, 20, 25, 40])
    train, val = holdout_split(labels, per_class=5, seed=3)
    assert np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    again_train, again_val = holdout_split(labels, per_class=5, seed=3)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, holdout_split(labels, per_class=5, seed=4)[1])

    _, val = holdout_split(labels, val_count=10, seed=0)
    assert np.bincount(labels[val]).tolist() == [3, 3, 2, 2]
    with pytest.raises(DataError, match="class 1 has only 20"):
        holdout_split(labels, per_class=21)
    with pytest.raises(DataError, match="class 'b' \\(1\\) has only 20"):
        holdout_split(labels, per_class=21, class_names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="exactly one of val_count or per_class"):
        holdout_split(labels)
    with pytest.raises(ValueError, match="per_class must be >= 0, got -1"):
        holdout_split(labels, per_class=-1)
    with pytest.raises(ValueError, match="val_count must be >= 0, got -2"):
        holdout_split(labels, val_count=-2)


# ----------------------------------------------------------------------------- CIFAR pickles

def fake_cifar10(root, per_batch=4):
    """A tiny cifar-10-batches-py; image k has every pixel of channel c equal to (k + c) % 256."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    k = 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.zeros((per_batch, 3 * 32 * 32), dtype=np.uint8)
        for row in range(per_batch):
            for c in range(3):
                data[row, c * 1024:(c + 1) * 1024] = (k + c) % 256
            k += 1
        batch = {b"data": data, b"labels": [int(i % 10) for i in range(per_batch)], b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def test_fake_cifar_loads_without_verification(tmp_path):
    fake_cifar10(tmp_path)
    train = load_cifar(tmp_path, "cifar10", "train", verify=False)
    assert train.images.shape == (20, 32, 32, 3) and train.class_names == list(CIFAR10_CLASSES)
    assert train.labels.tolist() == [0, 1, 2, 3] * 5
    assert train.images[7, 5, 9].tolist() == [7, 8, 9]  # channel-major rows became HWC
    test = load_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test", verify=False)
    assert len(test) == 4 and test.images[0, 0, 0].tolist() == [20, 21, 22]
    train2, val = build_dataset({"name": "cifar10", "root": tmp_path, "verify": False})
    assert len(train2) == 20 and len(val) == 4


def test_cifar_wrong_checksum_raises(tmp_path):
    fake_cifar10(tmp_path)
    with pytest.raises(DataError, match="data_batch_1 has md5") as e:
        load_cifar(tmp_path, "cifar10", "train")
    # it says what works: no verify=False, which neither a recipe nor the CLI takes
    assert "verify" not in str(e.value) and "unpack" in str(e.value) and "\n" not in str(e.value)


def test_cifar_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar(tmp_path, "cifar10", "train")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download.*unpack it into"):
        load_cifar(tmp_path, "cifar100", "test", download=True)
    assert not list(tmp_path.glob("*.part"))  # the temporary file is cleaned up

    import io  # a download that arrives corrupted: named by its md5, and nothing kept
    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"junk"))
    with pytest.raises(DataError, match="has md5 .*, expected"):
        load_cifar(tmp_path, "cifar10", "train", download=True)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.tar.gz"))


def test_cifar_unpickler_refuses_other_globals(tmp_path):
    folder = fake_cifar10(tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": {1, 2}, b"x": pickle.PickleError}))
    with pytest.raises(DataError, match="refusing"):
        load_cifar(tmp_path, "cifar10", "train", verify=False)


# ----------------------------------------------------------------------------- synthetic data and the sample

def test_synthetic_is_deterministic_and_learnable():
    ds = synthetic_dataset(200, num_classes=4, image_size=8, seed=1)
    assert ds.images.shape == (200, 8, 8, 3) and ds.class_counts().tolist() == [50] * 4
    assert np.array_equal(ds.images, synthetic_dataset(200, num_classes=4, image_size=8, seed=1).images)
    colours = ds.images.reshape(200, -1, 3).mean(1)
    means = np.stack([colours[ds.labels == c].mean(0) for c in range(4)])
    predicted = np.argmin(((colours[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == ds.labels).mean() > 0.95
    train, val = build_dataset({"name": "synthetic", "n": 100, "val_n": 20, "num_classes": 4})
    assert (len(train), len(val)) == (100, 20)


def test_embedded_sample():
    train, val = build_dataset({"name": "sample"})
    assert train.images.shape == (5000, 32, 32, 3) and val.images.shape == (1000, 32, 32, 3)
    assert train.class_names == list(CIFAR10_CLASSES)
    assert train.class_counts().tolist() == [500] * 10 and val.class_counts().tolist() == [100] * 10
    with pytest.raises(DataError):
        load_sample("test")


# ----------------------------------------------------------------------------- transforms

def batch_u8(n=6, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen(seed))


def test_random_crop_full_size_without_padding_is_identity():
    x = batch_u8()
    assert torch.equal(RandomCrop(32, padding=0)(x, gen()), x)


def test_random_crop_is_a_window_of_the_padded_image():
    x = batch_u8(n=8, size=10)
    out = RandomCrop(10, padding=2)(x, gen(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for image, crop in zip(padded, out):
        windows = [(t, l) for t in range(5) for l in range(5) if torch.equal(image[:, t:t + 10, l:l + 10], crop)]
        assert windows
    assert RandomCrop(10, padding=2)(x[0], gen()).shape == (3, 10, 10)


def test_flip_twice_is_identity_and_p_one_mirrors():
    x = batch_u8()
    flip = RandomHorizontalFlip(0.5)
    assert torch.equal(flip(flip(x, gen(5)), gen(5)), x)  # same draws flip the same images back
    assert torch.equal(RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)


def test_normalize_values():
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = Normalize(CIFAR10_MEAN, CIFAR10_STD)(x)
    expected_low = -torch.tensor(CIFAR10_MEAN) / torch.tensor(CIFAR10_STD)
    expected_high = (1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], expected_low) and torch.allclose(out[0, :, 0, 1], expected_high)
    assert torch.allclose(Normalize([0.5], [0.5])(torch.tensor([[[0.0, 1.0]]])), torch.tensor([[[-1.0, 1.0]]]))


def test_same_seed_same_output_for_every_random_transform():
    x = batch_u8(n=4)
    for transform in (cifar_train_transform(), RandomResizedCrop(16), RandAugment(2, 9, 0.5),
                      Compose([Resize(40), CenterCrop(24)])):
        a, b = transform(x, gen(7)), transform(x, gen(7))
        assert torch.equal(a, b), transform
    assert not torch.equal(cifar_train_transform()(x, gen(1)), cifar_train_transform()(x, gen(2)))


def test_resize_center_crop_and_random_resized_crop_shapes():
    x = batch_u8(n=2, size=20)[:, :, :, :16]  # 20 x 16
    assert Resize(8)(x).shape == (2, 3, 10, 8)
    assert Resize((5, 7))(x).dtype == torch.uint8
    assert torch.equal(Resize((20, 16))(x), x)
    assert CenterCrop(8)(x).shape == (2, 3, 8, 8)
    assert torch.equal(CenterCrop((20, 16))(x), x)
    assert CenterCrop(24)(x).shape == (2, 3, 24, 24)  # zero-padded
    assert RandomResizedCrop(12)(x, gen()).shape == (2, 3, 12, 12)
    whole = RandomResizedCrop((20, 16), scale=(1, 1), ratio=(0.8, 0.8))
    assert torch.equal(whole(x, gen()), x)


@pytest.mark.parametrize("op", sorted(RAND_AUGMENT_OPS))
def test_rand_augment_each_op(op):
    x = batch_u8(n=2, size=12)
    out = RandAugment(num_ops=1, magnitude=9, prob=1.0, ops=[op])(x, gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
    if op not in ("identity", "equalize"):  # every other op changes this input at magnitude 9
        assert not torch.equal(out, x)
    as_float = RandAugment(num_ops=1, magnitude=9, prob=1.0, ops=[op])(x.float() / 255, gen())
    assert as_float.dtype == torch.float32 and 0 <= as_float.min() and as_float.max() <= 1


def test_rand_augment_closed_forms():
    x = batch_u8(n=1, size=8)
    assert torch.equal(RandAugment(2, 9, prob=0.0)(x, gen()), x)
    assert torch.equal(RandAugment(1, 0, prob=1.0, ops=["rotate"])(x, gen()), x)  # 0 degrees
    solarized = RandAugment(1, 0, prob=1.0, ops=["solarize"])(x, gen())  # threshold 0: invert all
    assert torch.equal(solarized, 255 - x)


def test_rand_augment_op_sets():
    """"default" is onebit's 14 ops in their order (seeded runs keep their draws), "timm" timm's 15
    (BNext's rand-m7-mstd0.5-inc1 with increasing=True); an unknown set or op is named."""
    assert RandAugment().ops == ["identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
                                 "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
                                 "translate_y"]
    timm = RandAugment(2, 7, 0.5, increasing=True, ops="timm").ops
    assert len(timm) == 15 and "identity" not in timm and {"invert", "solarize_add"} <= set(timm)
    assert set(timm) | {"identity"} == set(RAND_AUGMENT_OPS)
    with pytest.raises(ValueError, match="unknown RandAugment op set 'tim'"):
        RandAugment(ops="tim")
    with pytest.raises(ValueError, match=r"unknown RandAugment ops \['blur'\]"):
        RandAugment(ops=["rotate", "blur"])


def test_rand_augment_ops_match_pil():
    """Each op against Pillow's own (ImageOps, ImageEnhance, Image.rotate / transform, bilinear),
    within one level of rounding, at the magnitude-9 arguments of timm's mapping (pinned here:
    rotate 27 degrees, shear 0.27, translate 0.405, enhance 1.72, posterize 3 bits, solarize 230).
    Geometric ops are compared where the sampled source lies inside the image: at the edge
    ours blends the fill bilinearly, Pillow does not (up to 60 levels apart there)."""
    from PIL import ImageEnhance, ImageOps
    from onebit.data.transforms import rand_augment_arg as arg
    OPS = RAND_AUGMENT_OPS
    expect_args = {"rotate": 27.0, "shear_x": 0.27, "translate_y": 0.405, "color": 1.72, "contrast": 1.72,
                   "brightness": 1.72, "sharpness": 1.72, "posterize": 3, "solarize": 230, "solarize_add": 99}
    for op, value in expect_args.items():
        assert arg(op, 9, negate=False) == pytest.approx(value), op
    assert arg("rotate", 9, negate=True) == pytest.approx(-27.0)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a[4:10, 4:10] = 200
    im, fill = Image.fromarray(a), (128, 128, 128)
    t = torch.from_numpy(a).permute(2, 0, 1).float()
    affine = dict(resample=Image.BILINEAR, fillcolor=fill)
    cases = {
        "autocontrast": (None, ImageOps.autocontrast(im)),
        "equalize": (None, ImageOps.equalize(im)),
        "posterize": (3, ImageOps.posterize(im, 3)),
        "invert": (None, ImageOps.invert(im)),
        "solarize_add": (99, im.point([min(255, i + 99) if i < 128 else i for i in range(256)] * 3)),
        "solarize": (230, ImageOps.solarize(im, 230)),
        "color": (1.72, ImageEnhance.Color(im).enhance(1.72)),
        "contrast": (0.46, ImageEnhance.Contrast(im).enhance(0.46)),
        "brightness": (1.72, ImageEnhance.Brightness(im).enhance(1.72)),
        "sharpness": (1.72, ImageEnhance.Sharpness(im).enhance(1.72)),
        "rotate": (27.0, im.rotate(27.0, **affine)),
        "shear_x": (0.27, im.transform(im.size, Image.AFFINE, (1, 0.27, 0, 0, 1, 0), **affine)),
        "shear_y": (-0.27, im.transform(im.size, Image.AFFINE, (1, 0, 0, -0.27, 1, 0), **affine)),
        "translate_x": (0.405, im.transform(im.size, Image.AFFINE, (1, 0, 0.405 * 16, 0, 1, 0), **affine)),
        "translate_y": (-0.405, im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, -0.405 * 16), **affine)),
    }
    for op, (value, ref) in cases.items():
        ours = OPS[op](t, value, fill).round().clamp(0, 255).permute(1, 2, 0).numpy()
        diff = np.abs(ours - np.asarray(ref, dtype=np.float32))
        if op in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
            inside = OPS[op](torch.full((1, 16, 16), 255.0), value, 0.0)[0].numpy() > 254.99
            inside[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
            assert inside.sum() >= 60, op  # enough pixels compared
            diff = diff[inside]
        assert diff.max() <= 1, (op, diff.max())


def test_mixup_and_cutmix_soft_targets():
    x = torch.randn(8, 3, 16, 16, generator=gen())
    y = torch.arange(8) % 5
    mixed, targets = mixup(x, y, alpha=0.4, num_classes=5, generator=gen(1))
    assert mixed.shape == x.shape and targets.shape == (8, 5)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    lam = targets[0, y[0]].item() if y[0] != y[-1] else None
    if lam is not None:
        assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[-1], atol=1e-5)
    again, _ = mixup(x, y, alpha=0.4, num_classes=5, generator=gen(1))
    assert torch.equal(mixed, again)

    mixed, targets = cutmix(x, y, alpha=1.0, num_classes=5, generator=gen(2))
    assert torch.allclose(targets.sum(1), torch.ones(8))
    kept = (mixed[0] == x[0]).all(0).float().mean().item()  # fraction of image 0 left in place
    assert targets[0, y[0]].item() == pytest.approx(kept, abs=1e-6)
    with pytest.raises(TypeError):
        mixup(x.to(torch.uint8), y, 0.2, num_classes=5)


def test_label_smoothing_closed_form():
    """soft_targets with smoothing eps: eps / K everywhere, 1 - eps + eps / K at the label; its soft cross
    entropy is F.cross_entropy(label_smoothing=eps); mixup and cutmix mix these smoothed rows."""
    import torch.nn.functional as F
    from onebit.data.transforms import soft_targets
    K, eps = 5, 0.1
    y = torch.tensor([0, 3, 4, 3, 1])
    t = soft_targets(y, K, eps)
    want = torch.full((5, K), eps / K)
    want[torch.arange(5), y] = 1 - eps + eps / K
    assert torch.allclose(t, want, rtol=0, atol=1e-7) and torch.allclose(t.sum(1), torch.ones(5))
    assert t[0, 0].item() == pytest.approx(0.92) and t[0, 1].item() == pytest.approx(0.02)
    assert torch.equal(soft_targets(y, K), F.one_hot(y, K).float())
    z = torch.randn(5, K, generator=gen(3))
    assert F.cross_entropy(z, t).item() == pytest.approx(F.cross_entropy(z, y, label_smoothing=eps).item(),
                                                         rel=1e-6)
    x = torch.randn(5, 3, 8, 8, generator=gen())
    _, mixed = mixup(x, y, alpha=0.4, num_classes=K, generator=gen(1), smoothing=eps)
    _, plain = mixup(x, y, alpha=0.4, num_classes=K, generator=gen(1))
    lam = plain[0, 0].item()  # y[0] = 0 and its partner y[4] = 1: lam at class 0
    assert torch.allclose(mixed, lam * t + (1 - lam) * t.flip(0), atol=1e-6)
    _, mixed = cutmix(x, y, alpha=1.0, num_classes=K, generator=gen(2), smoothing=eps)
    _, plain = cutmix(x, y, alpha=1.0, num_classes=K, generator=gen(2))
    lam = plain[0, 0].item()
    assert torch.allclose(mixed, lam * t + (1 - lam) * t.flip(0), atol=1e-6)


# ----------------------------------------------------------------------------- loader

def indexed_dataset(n):
    """Image i has value i % 256 in its first pixel and label i % 3."""
    images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    return ArrayDataset(images, np.arange(n) % 3, ["a", "b", "c"])


def batch_ids(x):
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def test_loader_visits_every_index_once_per_epoch():
    loader = BatchLoader(indexed_dataset(103), batch_size=10, shuffle=True, seed=0)
    assert len(loader) == 11
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 4, 4)
        assert (y == torch.tensor(batch_ids(x)) % 3).all()
        seen += batch_ids(x)
    assert sorted(seen) == list(range(103))
    loader.set_epoch(1)
    second = [i for x, _ in loader for i in batch_ids(x)]
    assert sorted(second) == list(range(103)) and second != seen
    loader.set_epoch(0)
    assert [i for x, _ in loader for i in batch_ids(x)] == seen
    dropping = BatchLoader(indexed_dataset(103), batch_size=10, shuffle=True, drop_last=True)
    assert len(dropping) == 10 and sum(len(y) for _, y in dropping) == 100
    assert batch_ids(next(iter(BatchLoader(indexed_dataset(5), 5)))[0]) == [0, 1, 2, 3, 4]


def test_loader_start_batch_resumes_exactly():
    ds = synthetic_dataset(70, num_classes=3, image_size=8, seed=2)
    transform = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip(), Normalize([0.5] * 3, [0.25] * 3)])
    loader = BatchLoader(ds, batch_size=16, shuffle=True, transform=transform, seed=11)
    loader.set_epoch(3)
    full = list(loader)
    resumed = BatchLoader(ds, batch_size=16, shuffle=True, transform=transform, seed=11)
    resumed.set_epoch(3, start_batch=2)
    tail = list(resumed)
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    by_constructor = BatchLoader(ds, 16, True, transform, seed=11, start_batch=4)
    by_constructor.set_epoch(3, start_batch=4)
    assert torch.equal(next(iter(by_constructor))[0], full[4][0])


def test_loader_mixed_sizes_need_a_sizing_transform():
    images = [np.full((h, 6, 3), h, dtype=np.uint8) for h in (5, 7, 9)]
    ds = ArrayDataset(images, [0, 1, 0], ["a", "b"])
    x, _ = next(iter(BatchLoader(ds, 3, transform=Compose([Resize((4, 4))]))))
    assert x.shape == (3, 3, 4, 4)
    with pytest.raises(DataError, match="different sizes"):
        next(iter(BatchLoader(ds, 3)))
