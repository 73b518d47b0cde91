"""Image transforms on torch tensors, without torchvision.

Every transform accepts one image (C, H, W) or a batch (N, C, H, W), uint8
(0..255) or float (0..1, or already normalised for the geometric ones), and is
called as ``transform(x, generator=None)``: randomness comes from the given
``torch.Generator``, or torch's global RNG when it is None, so a seeded
generator makes a run reproducible.

The CIFAR training pipeline (:func:`cifar_train_transform`: random crop with
4-pixel padding, horizontal flip, normalise) is vectorised over the whole batch.
RandomResizedCrop and RandAugment draw per-image parameters and loop over the
batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Normalisation constants, defined here and nowhere else (per-channel, 0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- helpers

def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _as_batch(x: torch.Tensor):
    """(batch view, True if x was a single CHW image)."""
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() == 4:
        return x, False
    raise ValueError(f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(x.shape)}")


def _unbatch(x: torch.Tensor, single: bool) -> torch.Tensor:
    return x.squeeze(0) if single else x


def _uniform(generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=generator).item())


def _to_dtype_of(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cast a float result back to ``like``'s dtype (rounding and clamping for uint8)."""
    if like.dtype == torch.uint8:
        return x.round().clamp(0, 255).to(torch.uint8)
    return x.to(like.dtype)


def _pad(x: torch.Tensor, padding: int, fill: float = 0) -> torch.Tensor:
    """Constant padding of ``padding`` pixels on all four sides of an NCHW batch."""
    return F.pad(x, (padding, padding, padding, padding), mode="constant", value=fill)


# ----------------------------------------------------------------------------- composition

class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, x, generator=None):
        for transform in self.transforms:
            x = transform(x, generator)
        return x

    def __repr__(self):
        return f"Compose({self.transforms})"


# ----------------------------------------------------------------------------- batched, vectorised

class RandomCrop:
    """Pad by ``padding`` (constant ``fill``), then crop ``size`` at a random offset per image."""

    def __init__(self, size, padding: int = 0, fill: float = 0):
        self.size = _pair(size)
        self.padding = int(padding)
        self.fill = fill

    def __call__(self, x, generator=None):
        x, single = _as_batch(x)
        if self.padding:
            x = _pad(x, self.padding, self.fill)
        n, _, height, width = x.shape
        h, w = self.size
        if height < h or width < w:
            raise ValueError(f"crop {self.size} larger than padded image {(height, width)}")
        top = torch.randint(0, height - h + 1, (n,), generator=generator)
        left = torch.randint(0, width - w + 1, (n,), generator=generator)
        rows = (top[:, None] + torch.arange(h))[:, :, None]  # (N, h, 1)
        cols = (left[:, None] + torch.arange(w))[:, None, :]  # (N, 1, w)
        batch = torch.arange(n)[:, None, None]
        out = x[batch, :, rows, cols]  # advanced indices first: (N, h, w, C)
        return _unbatch(out.permute(0, 3, 1, 2).contiguous(), single)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x, generator=None):
        x, single = _as_batch(x)
        flip = torch.rand(x.shape[0], generator=generator) < self.p
        out = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return _unbatch(out, single)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean) / std`` per channel; uint8 input is first scaled to 0..1. Returns float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, x, generator=None):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def __repr__(self):
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class Resize:
    """Bilinear (antialiased) resize. An int resizes the shorter side to it, keeping the aspect ratio."""

    def __init__(self, size, antialias: bool = True):
        self.size = size
        self.antialias = antialias

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if isinstance(self.size, (int, np.integer)):
            short, long = sorted((height, width))
            new_long = int(self.size * long / short)
            return (self.size, new_long) if height <= width else (new_long, self.size)
        return _pair(self.size)

    def __call__(self, x, generator=None):
        x, single = _as_batch(x)
        size = self.output_size(x.shape[-2], x.shape[-1])
        if size == tuple(x.shape[-2:]):
            return _unbatch(x, single)
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False,
                            antialias=self.antialias)
        return _unbatch(_to_dtype_of(out, x), single)

    def __repr__(self):
        return f"Resize({self.size})"


class CenterCrop:
    """Crop the central ``size`` region (zero-padding first if the image is smaller)."""

    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, x, generator=None):
        x, single = _as_batch(x)
        h, w = self.size
        height, width = x.shape[-2:]
        if height < h or width < w:
            pad_h, pad_w = max(h - height, 0), max(w - width, 0)
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            height, width = x.shape[-2:]
        top = int(round((height - h) / 2.0))
        left = int(round((width - w) / 2.0))
        return _unbatch(x[..., top:top + h, left:left + w], single)

    def __repr__(self):
        return f"CenterCrop({self.size})"


# ----------------------------------------------------------------------------- per-image draws

class RandomResizedCrop:
    """Crop a random area fraction ``scale`` and aspect ``ratio``, resize to ``size`` (torchvision's rule)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias: bool = True):
        self.size = _pair(size)
        self.scale = scale
        self.ratio = ratio
        self.antialias = antialias

    def crop_box(self, height: int, width: int, generator=None) -> tuple[int, int, int, int]:
        """(top, left, h, w): ten tries at a random box, else the central crop with clamped ratio."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, *log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return _randint(generator, 0, height - h + 1), _randint(generator, 0, width - w + 1), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, x, generator=None):
        x, single = _as_batch(x)
        out = []
        for image in x:
            top, left, h, w = self.crop_box(image.shape[-2], image.shape[-1], generator)
            crop = image[None, :, top:top + h, left:left + w].float()
            crop = F.interpolate(crop, size=self.size, mode="bilinear", align_corners=False,
                                 antialias=self.antialias)
            out.append(crop)
        return _unbatch(_to_dtype_of(torch.cat(out), x), single)

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


# ----------------------------------------------------------------------------- RandAugment ops
# Each op takes a float (C, H, W) image on the 0..255 scale and returns one.

def _grayscale(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] == 3:
        return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    return img.mean(0, keepdim=True)


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ImageEnhance: factor 0 gives ``degenerate``, 1 the image, >1 extrapolates."""
    return (degenerate + factor * (img - degenerate)).clamp(0, 255)


def _affine(img: torch.Tensor, matrix, fill) -> torch.Tensor:
    """PIL-style affine: ``matrix`` (a, b, c, d, e, f) maps output pixel (x, y) to input
    (a x + b y + c, d x + e y + f), pixel centres at +0.5. Bilinear; outside filled with ``fill``."""
    a, b, c, d, e, f = matrix
    channels, height, width = img.shape
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    grid = torch.stack((x_in / width * 2 - 1, y_in / height * 2 - 1), dim=-1)[None]
    with_mask = torch.cat((img, torch.ones(1, height, width)))[None]
    out = F.grid_sample(with_mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    fill = torch.as_tensor(fill, dtype=torch.float32).reshape(-1, 1, 1)
    return out[:channels] + (1 - out[channels:]) * fill


def _identity(img, arg, fill):
    return img


def _autocontrast(img, arg, fill):
    low = img.amin(dim=(1, 2), keepdim=True)
    high = img.amax(dim=(1, 2), keepdim=True)
    spread = high - low
    scale = torch.where(spread > 0, 255.0 / spread.clamp(min=1e-6), torch.ones_like(spread))
    low = torch.where(spread > 0, low, torch.zeros_like(low))
    return ((img - low) * scale).clamp(0, 255)


def _equalize(img, arg, fill):
    """Per-channel histogram equalisation, as PIL's ImageOps.equalize."""
    out = []
    for channel in img.round().clamp(0, 255).to(torch.int64):
        hist = torch.bincount(channel.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = int((nonzero.sum() - nonzero[-1]).item()) // 255
        if step == 0:
            out.append(channel.float())
            continue
        lut = (torch.cumsum(hist, 0) + step // 2) // step
        lut = torch.cat((torch.zeros(1, dtype=lut.dtype), lut[:-1])).clamp(0, 255)
        out.append(lut[channel].float())
    return torch.stack(out)


def _rotate(img, degrees, fill):
    """Rotate counter-clockwise by ``degrees`` about the image centre (as PIL's Image.rotate)."""
    _, height, width = img.shape
    angle = -math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    matrix = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    return _affine(img, matrix, fill)


def _solarize(img, threshold, fill):
    return torch.where(img >= threshold, 255 - img, img)


def _solarize_add(img, add, fill):
    """Add ``add`` to the pixels below 128, clipped at 255 (timm's SolarizeAdd)."""
    return torch.where(img < 128, (img + add).clamp(max=255), img)


def _invert(img, arg, fill):
    return 255 - img


def _color(img, factor, fill):
    return _blend(_grayscale(img).expand_as(img), img, factor)


def _posterize(img, bits, fill):
    if bits >= 8:
        return img
    mask = (0xFF << (8 - bits)) & 0xFF
    return (img.round().clamp(0, 255).to(torch.uint8) & mask).float()


def _contrast(img, factor, fill):
    return _blend(_grayscale(img).mean().round(), img, factor)


def _brightness(img, factor, fill):
    return _blend(torch.zeros_like(img), img, factor)


def _sharpness(img, factor, fill):
    channels, height, width = img.shape
    if height < 3 or width < 3:
        return img
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = kernel.expand(channels, 1, 3, 3)
    smooth = F.conv2d(img[None], kernel, groups=channels)[0].round()
    degenerate = img.clone()
    degenerate[:, 1:-1, 1:-1] = smooth  # PIL keeps the border pixels
    return _blend(degenerate, img, factor)


def _shear_x(img, shear, fill):
    return _affine(img, (1, shear, 0, 0, 1, 0), fill)


def _shear_y(img, shear, fill):
    return _affine(img, (1, 0, 0, shear, 1, 0), fill)


def _translate_x(img, fraction, fill):
    return _affine(img, (1, 0, fraction * img.shape[2], 0, 1, 0), fill)


def _translate_y(img, fraction, fill):
    return _affine(img, (1, 0, 0, 0, 1, fraction * img.shape[1]), fill)


RAND_AUGMENT_OPS = {
    "identity": _identity,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate": _rotate,
    "solarize": _solarize,
    "color": _color,
    "posterize": _posterize,
    "contrast": _contrast,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
    "invert": _invert,
    "solarize_add": _solarize_add,
}
DEFAULT_RAND_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize", "contrast",
                    "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
# timm's 15 ops (_RAND_TRANSFORMS and, with increasing=True, _RAND_INCREASING_TRANSFORMS): no identity
TIMM_RAND_OPS = ("autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
                 "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
RAND_OP_SETS = {"default": DEFAULT_RAND_OPS, "timm": TIMM_RAND_OPS}


def rand_augment_arg(op: str, level: float, negate: bool, increasing: bool = False):
    """timm's mapping from a magnitude ``level`` in [0, 10] to the op's argument.

    ``increasing=False`` is timm's default ``rand-m*`` behaviour (posterize and
    solarize get *milder* as the level rises; enhance factors are 0.1 + 0.18 level).
    ``increasing=True`` is timm's ``inc1`` variant (every op stronger with level,
    enhance factors 1 +- 0.09 level). ``negate`` flips the sign of signed args.
    """
    sign = -1.0 if negate else 1.0
    fraction = level / 10.0
    if op == "rotate":
        return sign * fraction * 30.0
    if op in ("shear_x", "shear_y"):
        return sign * fraction * 0.3
    if op in ("translate_x", "translate_y"):
        return sign * fraction * 0.45
    if op in ("color", "contrast", "brightness", "sharpness"):
        return max(0.1, 1.0 + sign * fraction * 0.9) if increasing else fraction * 1.8 + 0.1
    if op == "posterize":
        bits = int(fraction * 4)
        return 4 - bits if increasing else bits
    if op == "solarize":
        threshold = int(fraction * 256)
        return 256 - threshold if increasing else threshold
    if op == "solarize_add":
        return int(fraction * 110)
    return None


class RandAugment:
    """timm-style RandAugment.

    For each image, ``num_ops`` ops are drawn (with replacement) from ``ops``;
    each is applied with probability ``prob`` at magnitude ``magnitude`` plus
    Gaussian noise of std ``magnitude_std`` (``inf``: uniform in [0, magnitude]),
    clipped to [0, 10]. Geometric ops fill uncovered pixels with ``fill``
    (0..255). ``ops``: a list of op names, or ``"default"`` (onebit's set:
    identity, no invert or solarize-add) or ``"timm"`` (timm's 15 ops).
    BNext's authors use timm's ``rand-m7-mstd0.5-inc1``: ``RandAugment(2, magnitude=7,
    magnitude_std=0.5, increasing=True, ops="timm", fill=(124, 116, 104))`` (timm fills with the
    ImageNet mean pixel; it also draws bilinear or bicubic resampling where this is bilinear only;
    the paper, 004 Sec. 5.1, says only "RandAugment (7, 0.5)").
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9, magnitude_std: float = 0.0,
                 prob: float = 0.5, increasing: bool = False, fill=128,
                 ops: Sequence[str] | str = "default"):
        if isinstance(ops, str):
            if ops not in RAND_OP_SETS:
                raise ValueError(f"unknown RandAugment op set {ops!r}; give one of {list(RAND_OP_SETS)} or a list "
                                 f"of op names")
            ops = RAND_OP_SETS[ops]
        unknown = [op for op in ops if op not in RAND_AUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; known: {list(RAND_AUGMENT_OPS)}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.prob = prob
        self.increasing = increasing
        self.fill = fill
        self.ops = list(ops)

    def _level(self, generator) -> float:
        level = self.magnitude
        if self.magnitude_std == float("inf"):
            level = _uniform(generator, 0.0, self.magnitude)
        elif self.magnitude_std > 0:
            level = self.magnitude + self.magnitude_std * torch.randn((), generator=generator).item()
        return min(max(level, 0.0), 10.0)

    def augment_image(self, img: torch.Tensor, generator=None) -> torch.Tensor:
        """One float (C, H, W) image on the 0..255 scale."""
        for _ in range(self.num_ops):
            op = self.ops[_randint(generator, 0, len(self.ops))]
            if torch.rand((), generator=generator).item() >= self.prob:
                continue
            level = self._level(generator)
            negate = torch.rand((), generator=generator).item() < 0.5
            img = RAND_AUGMENT_OPS[op](img, rand_augment_arg(op, level, negate, self.increasing), self.fill)
        return img

    def __call__(self, x, generator=None):
        x, single = _as_batch(x)
        scale = 1.0 if x.dtype == torch.uint8 else 255.0  # float input is taken to be 0..1
        out = torch.stack([self.augment_image(image.float() * scale, generator) for image in x])
        out = out if x.dtype == torch.uint8 else out / scale
        return _unbatch(_to_dtype_of(out, x), single)

    def __repr__(self):
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, increasing={self.increasing})")


# ----------------------------------------------------------------------------- mixing a batch

def _sample_beta(alpha: float, generator=None) -> float:
    """Beta(alpha, alpha) drawn reproducibly from a torch generator (via a numpy stream)."""
    seed = int(torch.randint(0, 2**62, (), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def soft_targets(y: torch.Tensor, num_classes: int | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """(N,) int labels -> (N, K) float targets with optional label smoothing; (N, K) passes through."""
    if y.dim() == 2:
        return y.float()
    if num_classes is None:
        raise ValueError("pass num_classes to turn integer labels into soft targets")
    off = smoothing / num_classes
    targets = torch.full((y.shape[0], num_classes), off, dtype=torch.float32)
    return targets.scatter_(1, y.long()[:, None], 1.0 - smoothing + off)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int | None = None,
          generator=None, smoothing: float = 0.0):
    """Mix each image with its partner in the reversed batch: ``lam x + (1 - lam) x.flip(0)``.

    ``lam ~ Beta(alpha, alpha)`` once per batch. Returns (mixed float batch,
    (N, K) soft targets mixed with the same ``lam``; each row sums to 1).
    """
    if not x.is_floating_point():
        raise TypeError("mixup needs a float batch; apply Normalize (or .float()) first")
    targets = soft_targets(y, num_classes, smoothing)
    lam = _sample_beta(alpha, generator) if alpha > 0 else 1.0
    return lam * x + (1 - lam) * x.flip(0), lam * targets + (1 - lam) * targets.flip(0)


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int | None = None,
           generator=None, smoothing: float = 0.0):
    """Paste a random box from each image's partner in the reversed batch.

    The box covers about ``1 - lam`` of the image (``lam ~ Beta(alpha, alpha)``),
    is clipped at the borders, and the targets are mixed by the area actually
    pasted. Returns (mixed batch, (N, K) soft targets).
    """
    targets = soft_targets(y, num_classes, smoothing)
    lam = _sample_beta(alpha, generator) if alpha > 0 else 1.0
    height, width = x.shape[-2:]
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = _randint(generator, 0, height), _randint(generator, 0, width)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, lam * targets + (1 - lam) * targets.flip(0)


# ----------------------------------------------------------------------------- standard pipelines

def cifar_train_transform(mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Compose:
    """Random 32x32 crop of the 4-pixel zero-padded image, horizontal flip, normalise."""
    return Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(0.5), Normalize(mean, std)])


def cifar_eval_transform(mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Normalize:
    return Normalize(mean, std)
