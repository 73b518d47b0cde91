"""The README's main job, shortened to one epoch: train, evaluate, pack, print size and speed-up."""
import subprocess
import sys


def test_demo_trains_packs_and_reports(tmp_path):
    out = subprocess.run([sys.executable, "-m", "onebit.cli", "demo", "--out", str(tmp_path / "run"), "--epochs", "1"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "validation top-1" in text
    assert "smaller than the float32 weights" in text and "packed validation top-1" in text
    assert "faster" in text or "slower" in text
    assert (tmp_path / "run" / "model.packed.safetensors").is_file()
    assert (tmp_path / "run" / "results.json").is_file()
