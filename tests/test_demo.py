"""The README's main job, shortened to one epoch: train, evaluate, pack, print size and speed-up."""
import re
import subprocess
import sys

import torch

from onebit import deploy
from onebit.train.checkpoint import load_model


def test_demo_trains_packs_and_reports(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "onebit.cli", "demo", "--out", str(run), "--epochs", "1"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    final = float(re.search(r"^validation top-1 ([0-9.]+)%", text, re.M).group(1))
    packed_top1 = float(re.search(r"packed validation top-1 ([0-9.]+)%", text).group(1))
    assert packed_top1 == final  # the file is not BN-folded: the engine predicts exactly what the model does
    path = run / "model.packed.safetensors"
    size, smaller, fp32 = re.search(r"packed -> .*: ([0-9,]+) bytes, ([0-9.]+)x smaller than the float32 weights "
                                    r"\(([0-9,]+) bytes\)", text).groups()
    size, fp32 = int(size.replace(",", "")), int(fp32.replace(",", ""))
    model, _ = load_model(run / "last.pt")
    floats = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    counters = sum(b.numel() for b in model.buffers() if not b.is_floating_point())  # BN's int64 num_batches_tracked
    assert size == path.stat().st_size and fp32 == deploy.float32_bytes(model) == 4 * floats + 8 * counters
    assert float(smaller) == round(fp32 / size, 1) and fp32 / size > 10
    f32_ms, packed_ms, ratio, word = re.search(r"float32 PyTorch ([0-9.]+) ms, packed ([0-9.]+) ms: ([0-9.]+)x "
                                               r"(faster|slower)", text).groups()
    f, p = float(f32_ms), float(packed_ms)  # printed to 0.01 ms, the ratio to 0.1: the bounds they allow
    lo, hi = (f - 0.005) / (p + 0.005), (f + 0.005) / max(p - 0.005, 1e-9)
    if word == "slower":
        lo, hi = 1 / hi, 1 / lo
    assert lo - 0.05 <= float(ratio) <= hi + 0.05, (f32_ms, packed_ms, ratio, word)
    assert (run / "results.json").is_file()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deploy.load(path)(x), model.eval()(x), rtol=1e-4, atol=1e-4)
