"""The run report (one HTML page), penultimate features / t-SNE and ReSTE indicator curves."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

import onebit
from onebit import data as D
from onebit.analysis.features import penultimate_features, tsne_png
from onebit.analysis.indicators import indicator_curves, indicators_png
from onebit.layers import BinaryConv2d
from onebit.analysis.report import write_report
from onebit.train import load_recipe, train

SYNTH = {"name": "synthetic", "n": 96, "val_n": 32, "num_classes": 4, "train_transform": "none",
         "eval_transform": "none"}
PNG = "data:image/png;base64,"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    r = {"model": {"name": "bireal_resnet20", "input_binarizer": {"name": "reste", "o_end": 3}},
         "data": SYNTH, "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "lr": 0.05, "threads": 1}}
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(r))
    train(load_recipe(str(tmp / "tiny.yaml")), tmp / "run", quiet=True)
    return tmp / "run"


def test_report_of_a_run(run_dir):
    pytest.importorskip("matplotlib")
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    for anchor in ("curves", "confusion", "examples", "summary", "results"):
        assert f'<section id="{anchor}">' in page
    assert page.count(PNG) == 3 and "Missing parts" not in page and "Not drawn" not in page
    assert "params_binary" in page and "BOPs" in page          # the complexity table
    assert "best_val_top1" in page                               # results.json
    for name in ("curves.png", "confusion.png", "examples.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_other_output_and_data(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = write_report(run_dir, out=tmp_path / "r" / "page.html", data=str(tmp_path / "nowhere"))
    page = out.read_text()
    assert out.is_file() and (tmp_path / "r" / "curves.png").is_file()
    assert page.count(PNG) == 1  # curves only: the data folder does not exist
    assert "Missing parts (2)" in page and "nowhere" in page


def test_report_of_a_bare_checkpoint(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(run_dir / "best.pt", tmp_path / "model.pt")
    page = write_report(tmp_path / "model.pt").read_text()
    assert (tmp_path / "report.html").is_file()
    assert "Missing parts (2)" in page
    assert "no\nmetrics.jsonl" in page or "no metrics.jsonl" in page
    assert "results.json" in page
    assert '<section id="confusion">' in page and page.count(PNG) == 2  # data from the recipe in the checkpoint
    assert "params_binary" in page


def test_report_without_checkpoint(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(
        {"stage": s, "epoch": e, "lr": 0.1 / e, "progress": 0.0, "train_loss": 2.0 / e, "train_top1": 20.0 * e,
         "flip_ratio": 0.1 / e, "epoch_time": 1.0, "img_per_s": 100.0}) for s, e in
        (("fp", 1), ("fp", 2), ("binary", 1), ("binary", 2), ("binary", 3))) + "\n")
    page = write_report(run).read_text()
    assert page.count(PNG) == 1 and "Missing parts (4)" in page and "no checkpoint" in page


def test_tsne_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    feats = rng.normal(size=(60, 16)) + 4 * np.eye(16)[labels]
    emb = tsne_png(feats, labels, ["a", "b", "c"], tmp_path / "tsne.png")
    assert emb.shape == (60, 2) and (tmp_path / "tsne.png").stat().st_size > 1000


def test_penultimate_features():
    ds = D.synthetic_dataset(40, num_classes=4, seed=1)
    loader = D.BatchLoader(ds, 16, transform=D.Normalize(D.CIFAR10_MEAN, D.CIFAR10_STD))
    torch.manual_seed(0)
    model = onebit.create_model("bireal_resnet20", num_classes=4, head_bn=True)  # features after the head BN
    for m in model.modules():  # running statistics far from (0, 1), so train-mode BN would show
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.train()  # penultimate_features runs it in eval mode and restores the mode
    state = {k: v.clone() for k, v in model.state_dict().items()}
    f, y = penultimate_features(model, loader, max_images=20)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert f.shape == (20, 64) and f.dtype == np.float32 and (y == ds.labels[:20]).all()
    # the features are model.forward_features of the first 20 images, in eval mode: exactly, batch by
    # batch as the loader gave them (16 + the first 4 of the next 16), and to rounding as one batch
    xs = torch.cat([x for x, _ in loader])
    model.eval()
    with torch.no_grad():
        per_batch = torch.cat([model.forward_features(xs[:16]), model.forward_features(xs[16:32])[:4]])
        whole = model.forward_features(xs[:20])
        assert torch.equal(torch.from_numpy(f), per_batch)
        assert torch.allclose(torch.from_numpy(f), whole, rtol=1e-5, atol=1e-5)
        # and they are the classifier's input: fc(features) = the logits
        assert torch.allclose(model.fc(torch.from_numpy(f)), model(xs[:20]), rtol=1e-5, atol=1e-5)
    # without forward_features: the input of the last nn.Linear, here ReLU(Linear(flatten(x)))
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 4))
    f, y = penultimate_features(mlp, loader, max_images=None)
    assert f.shape == (40, 8) and (f >= 0).all()
    with torch.no_grad():
        want = torch.cat([mlp[:3](x) for x, _ in loader])
    assert torch.equal(torch.from_numpy(f), want) and (y == ds.labels).all()


def test_indicator_curves_trade_off(tmp_path):
    curves = indicator_curves(torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 0.3)
    err, inst = np.array(curves["estimating_error"]), np.array(curves["gradient_instability"])
    assert curves["o"] == [1, 1.5, 2, 2.5, 3, 3.5, 4]
    assert (np.diff(err) < 0).all() and (np.diff(inst) > 0).all()
    x = (torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 0.3).double()
    for o, fit in zip(curves["o"], curves["fitting_error"]):  # one L2 norm over plain values
        assert fit == pytest.approx(((x.sign() * x.abs() ** (1 / o) - x.sign()) ** 2).sum().sqrt().item(), rel=1e-9)
    model = onebit.create_model("bireal_resnet20")
    c2 = indicator_curves(model, o_values=(1, 2, 3))
    assert len(c2["estimating_error"]) == 3 and c2["n"] > 0
    convs = [m.weight.detach().double().flatten() for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == 18  # the authors' fitting error: one L2 norm per binary layer, summed
    want = sum(((w.sign() * w.abs() ** 0.5 - w.sign()) ** 2).sum().sqrt().item() for w in convs)
    assert c2["fitting_error"][1] == pytest.approx(want, rel=1e-9)
    pytest.importorskip("matplotlib")  # (the numbers above need no plotting)
    indicators_png(curves, tmp_path / "ind.png", title="gaussian", mark_o=3)
    assert (tmp_path / "ind.png").stat().st_size > 1000


def test_cli_report_tsne_indicators(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import json as _json
    import shutil
    from onebit.cli import main as cli
    from onebit.train import load_recipe, train
    p = tmp_path / "r.yaml"
    p.write_text("model: {name: bireal_resnet20}\n"
                 "data: {name: synthetic, n: 64, val_n: 32, num_classes: 4, train_transform: none, eval_transform: none}\n"
                 "train: {epochs: 1, batch_size: 32, lr: 0.05, threads: 1}\n")
    run = tmp_path / "run"
    train(load_recipe(str(p)), run, quiet=True)
    assert cli(["report", str(run)]) == 0 and (run / "report.html").is_file()
    capsys.readouterr()
    assert cli(["indicators", str(run / "best.pt"), "--o", "1,2,3", "--out", str(tmp_path / "i.png"), "--json"]) == 0
    curves = _json.loads(capsys.readouterr().out)
    assert curves["o"] == [1.0, 2.0, 3.0] and (tmp_path / "i.png").is_file()
    from onebit.train import checkpoint
    from onebit.train.diagnostics import fitting_error
    trained, _ = checkpoint.load_model(run / "best.pt")
    assert curves["fitting_error"] == [fitting_error(trained, o) for o in (1.0, 2.0, 3.0)]
    assert cli(["indicators", "--out", str(tmp_path / "g.png")]) == 0
    shutil.copy(run / "best.pt", tmp_path / "m.pt")
    assert cli(["tsne", str(tmp_path / "m.pt"), "--data", "sample", "--max-images", "0"]) == 2  # 4 classes vs 10
