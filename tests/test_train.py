"""Trainer, recipes, optimizers, schedules, KD, checkpoints and the CLI (on synthetic data)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import onebit
from onebit.cli import main as cli
from onebit.train import (DEFAULTS, LogitsKD, Teacher, TrainingDiverged, apply_overrides, kl_div, list_recipes,
                          load_recipe, lr_at, param_groups, soft_cross_entropy, train)
from onebit.train import checkpoint as C
from onebit.train.optim import build_optimizer

SYNTH = {"name": "synthetic", "n": 96, "val_n": 32, "num_classes": 4, "train_transform": "none",
         "eval_transform": "none"}


def tiny_recipe(tmp_path, **train_over):
    r = {"model": {"name": "bireal_resnet20", "input_binarizer": {"name": "reste", "o_end": 3}},
         "data": SYNTH, "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "lr": 0.05,
                                   "warmup_epochs": 1, "threads": 1, **train_over}}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- recipes

def test_shipped_recipes_load():
    names = list_recipes()
    for n in ("fp-resnet20-cifar10", "ste-resnet20-cifar10", "reste-resnet20-cifar10", "reactnet-resnet20-cifar10"):
        assert n in names
        r = load_recipe(n)
        assert r["name"] == n and r["model"]["name"]
        onebit.create_model(r["model"]["name"], **{k: v for k, v in r["model"].items() if k != "name"})
    for n in names:  # every shipped recipe names a buildable model
        r = load_recipe(n)
        m = onebit.create_model(r["model"]["name"], **{k: v for k, v in r["model"].items() if k != "name"})
        assert sum(p.numel() for p in m.parameters()) > 0
    r = load_recipe("reste-resnet20-cifar10")
    assert r["model"]["input_binarizer"] == {"name": "reste", "o_end": 3, "schedule": "cos"}


def test_overrides_are_checked():
    r = load_recipe("reste-resnet20-cifar10", ["train.epochs=3", "train.lr=0.5", "model.scale=tensor",
                                               "data.root=/x", "train.grad_clip=5"])
    assert r["train"]["epochs"] == 3 and r["train"]["lr"] == 0.5 and r["model"]["scale"] == "tensor"
    assert r["overrides"] == ["train.epochs=3", "train.lr=0.5", "model.scale=tensor", "data.root=/x", "train.grad_clip=5"]
    with pytest.raises(ValueError, match="unknown recipe key 'train.epoch'"):
        load_recipe("reste-resnet20-cifar10", ["train.epoch=3"])
    with pytest.raises(ValueError, match="expected an int"):
        load_recipe("reste-resnet20-cifar10", ["train.epochs=many"])
    with pytest.raises(ValueError, match="expected an integer"):
        load_recipe("reste-resnet20-cifar10", ["train.epochs=2.5"])
    with pytest.raises(ValueError, match="key.sub=value"):
        load_recipe("reste-resnet20-cifar10", ["train.epochs"])
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_alpha_init_override_takes_a_number_or_a_name():
    """The BinaryViT recipes set model.alpha_init to the name "keys"; the authors' 0.005 must still be
    settable from the command line (and back), while other types stay refused."""
    r = load_recipe("binaryvit-cifar10-pyramid", ["model.alpha_init=0.005"])
    assert load_recipe("binaryvit-cifar10-pyramid")["model"]["alpha_init"] == "keys"
    assert r["model"]["alpha_init"] == 0.005
    assert apply_overrides(r, ["model.alpha_init=keys"])["model"]["alpha_init"] == "keys"
    with pytest.raises(ValueError, match="expected a str like 'keys', got a list"):
        load_recipe("binaryvit-cifar10-pyramid", ["model.alpha_init=[1, 2]"])


# ---------------------------------------------------------------- optimizer and schedule

def test_lr_schedule_closed_form():
    base, total, warm = 0.1, 100, 10
    assert lr_at(0, total, warm, base) == pytest.approx(0.01)
    assert lr_at(9, total, warm, base) == pytest.approx(0.1)
    assert lr_at(10, total, warm, base) == pytest.approx(0.1)
    assert lr_at(55, total, warm, base) == pytest.approx(0.05)
    assert lr_at(100, total, warm, base, min_lr=1e-3) == pytest.approx(1e-3)
    assert lr_at(32, total, 0, base) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.32)))


def test_param_groups_split_binary_real_and_no_decay():
    m = onebit.create_model("reactnet_resnet20")
    groups = {g["group"]: g for g in param_groups(m, 1e-3, 1e-8)}
    assert groups["binary"]["weight_decay"] == 1e-8 and groups["real"]["weight_decay"] == 1e-3
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert len(groups["binary"]["params"]) == 18  # the 18 binary 3x3 convs
    ids = {id(p) for p in groups["no_decay"]["params"]}
    assert id(m.fc.bias) in ids and id(m.stem[1].weight) in ids
    assert id(m.fc.weight) in {id(p) for p in groups["real"]["params"]}
    assert sum(len(g["params"]) for g in groups.values()) == len(list(m.parameters()))
    bnext = {g["group"]: g["weight_decay"] for g in param_groups(m, 1e-3, 1e-8, norm_bias_weight_decay=1e-3)}
    assert bnext == {"binary": 1e-8, "real": 1e-3, "no_decay": 1e-3}  # BNext's code: 1e-3 on BN and biases too


def test_norm_bias_weight_decay_reaches_the_optimizer(tmp_path):
    """train.norm_bias_weight_decay sets the BN / bias / 1-D group's decay; a run whose saved recipe
    predates the key (an older onebit) resumes with its default, 0."""
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=2)), ["train.norm_bias_weight_decay=0.01"])
    opt = build_optimizer(onebit.create_model(recipe["model"]["name"]), recipe["train"])
    assert {g["group"]: g["weight_decay"] for g in opt.param_groups}["no_decay"] == 0.01
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=2)))
    out = tmp_path / "run"
    assert train(recipe, out, quiet=True, stop_after_steps=2)["interrupted"]
    state = C.load(out / "last.pt")
    del state["recipe"]["train"]["norm_bias_weight_decay"]
    C.save_atomic(state, out / "last.pt")
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    del saved["train"]["norm_bias_weight_decay"]
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    assert train(None, out, resume=True, quiet=True, stop_after_steps=1)["interrupted"]
    assert C.load(out / "last.pt")["recipe"]["train"]["norm_bias_weight_decay"] == 0.0  # filled in
    assert "norm_bias_weight_decay" not in (out / "recipe.yaml").read_text()  # the run's own file, as it was
    res = train(None, out, resume=True, quiet=True)  # a second resume: last.pt and recipe.yaml still agree
    assert res["epochs"] == 2 and rows(out)[-1]["epoch"] == 2


# ---------------------------------------------------------------- distillation

def test_kd_losses_closed_form():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    for T in (1.0, 4.0):
        pt = F.softmax(t / T, -1)
        ce = -(pt * F.log_softmax(s / T, -1)).sum(-1).mean() * T * T
        entropy = -(pt * pt.log()).sum(-1).mean() * T * T
        assert soft_cross_entropy(s, t, T).item() == pytest.approx(ce.item(), rel=1e-5)
        assert kl_div(s, t, T).item() == pytest.approx((ce - entropy).item(), rel=1e-4, abs=1e-6)
    assert kl_div(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # by hand: student [0, 0], teacher [ln 3, 0] at T = 1: p_t = (3/4, 1/4), soft CE = ln 2,
    # KL = ln 2 - H(3/4, 1/4); at T = 2 the CE is still ln 2 (uniform student), times T^2
    s1, t1 = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert soft_cross_entropy(s1, t1, 1.0).item() == pytest.approx(math.log(2))
    assert kl_div(s1, t1, 1.0).item() == pytest.approx(math.log(2) - h, rel=1e-5)
    assert soft_cross_entropy(s1, t1, 2.0).item() == pytest.approx(4 * math.log(2))


def test_evaluate_closed_form():
    """top-1, top-5, per-class accuracy and the confusion matrix of preset logits, by hand, with a
    label map (data set class i -> model output label_map[i])."""
    from onebit.train.evaluate import evaluate
    logits = torch.tensor([[9., 1, 0, 0, 0, 0, 0],    # true 0 -> 0
                           [0., 9, 8, 7, 6, 5, 4],    # true 2 -> 1; 2 in its top 5
                           [0., 1, 2, 3, 4, 5, 9],    # true 1 -> 6; 1 not in its top 5
                           [0., 0, 9, 0, 0, 0, 0]])   # true 2 -> 2

    class Preset(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return logits[x[:, 0].long()]

    x = torch.arange(4.0).view(4, 1)
    y = torch.tensor([0, 1, 2, 1])  # data set labels; label_map swaps classes 1 and 2: model labels 0, 2, 1, 2
    names = [f"c{i}" for i in range(7)]
    res = evaluate(Preset(), [(x[:2], y[:2]), (x[2:], y[2:])], names, label_map=[0, 2, 1, 3, 4, 5, 6])
    assert res["n"] == 4 and res["top1"] == 50.0 and res["top5"] == 75.0
    assert res["per_class"]["c0"] == 100.0 and res["per_class"]["c1"] == 0.0 and res["per_class"]["c2"] == 50.0
    assert res["per_class"]["c3"] is None
    conf = torch.zeros(7, 7, dtype=torch.long)
    conf[0, 0] = conf[2, 1] = conf[1, 6] = conf[2, 2] = 1
    assert res["confusion"] == conf.tolist()
    assert res["loss"] == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 2, 1, 2])).item())


@pytest.mark.slow
def test_compiled_teacher_gives_the_eager_teachers_logits():
    _check_compiled_teacher_gives_the_eager_teachers_logits()


def test_compiled_teacher_gives_the_eager_teachers_logits_aot_eager(monkeypatch):
    """The same with Teacher's torch.compile forced to backend="aot_eager" (dynamo's tracing and guards,
    without inductor's code generation): fast enough for the default run."""
    compile_ = torch.compile
    calls = []

    def aot_eager(model, **kw):
        calls.append(kw)
        return compile_(model, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", aot_eager)
    _check_compiled_teacher_gives_the_eager_teachers_logits()
    assert calls == [{}]  # the teacher was compiled once, with the default backend asked for


def _check_compiled_teacher_gives_the_eager_teachers_logits():
    torch.manual_seed(0)
    net = onebit.create_model("resnet20")
    eager, compiled = Teacher(net), Teacher(net, compile=True)
    assert [n for n, _ in compiled.named_modules()] == [n for n, _ in eager.named_modules()]
    for n in (4, 3):  # a second batch size, as the last batch of an epoch
        x = torch.randn(n, 3, 32, 32)
        assert torch.allclose(compiled(x), eager(x), rtol=1e-4, atol=1e-5)


def test_teacher_is_frozen_and_in_eval():
    net = onebit.create_model("resnet20")
    teacher = Teacher(net)
    teacher.train()
    assert not teacher.model.training
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad and all(not p.requires_grad for p in net.parameters())
    kd = LogitsKD(teacher, temperature=2.0, alpha=0.5)
    s = torch.randn(2, 10, requires_grad=True)
    y = torch.tensor([1, 2])
    expect = 0.5 * soft_cross_entropy(s, out, 2.0) + 0.5 * F.cross_entropy(s, y)
    assert kd.loss(s, x, y, 0.0).item() == pytest.approx(expect.item(), rel=1e-6)
    for bad, match in (({"alpha": 1.5}, r"kd.alpha must be in \[0, 1\], got 1.5"),
                       ({"temperature": 0.0}, "kd.temperature must be > 0, got 0.0"),
                       ({"loss": "mse"}, "unknown KD loss 'mse'")):
        with pytest.raises(ValueError, match=match):
            LogitsKD(teacher, **bad)


@pytest.mark.parametrize("kd_loss", ["soft_ce", "kl"])
def test_logits_kd_mixes_kd_and_smoothed_ce_closed_form(kd_loss):
    """alpha = 0.5, label_smoothing = 0.1, T = 3: loss = alpha KD + (1 - alpha) CE_ls, with
    CE_ls = mean_i -((1 - eps) log q_i,y_i + (eps / K) sum_k log q_i,k)  (q = softmax(student)), and KD the
    soft CE (or KL = soft CE - T^2 H(p_t)), all by hand in float64."""
    torch.manual_seed(3)
    net = torch.nn.Linear(6, 5).double()
    teacher = Teacher(net)
    images, student = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4, 3])
    T, alpha, eps, K = 3.0, 0.5, 0.1, 5
    with torch.no_grad():
        t_logits = net(images)
    soft_ce = _soft_ce_by_hand(student, t_logits, T)
    p_t = torch.softmax(t_logits / T, -1)
    kd = soft_ce if kd_loss == "soft_ce" else soft_ce + (p_t * p_t.log()).sum(-1).mean() * T * T
    log_q = torch.log_softmax(student, -1)
    ce_ls = -((1 - eps) * log_q[torch.arange(4), labels] + eps / K * log_q.sum(-1)).mean()
    expect = alpha * kd + (1 - alpha) * ce_ls
    got = LogitsKD(teacher, temperature=T, alpha=alpha, loss=kd_loss, label_smoothing=eps).loss(
        student, images, labels, 0.3)
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)
    # the smoothing matters: without it the CE term (and the loss) moves
    ce0 = -log_q[torch.arange(4), labels].mean()
    assert abs((alpha * kd + (1 - alpha) * ce0 - expect).item()) > 1e-3
    # alpha = 1 is the KD term alone; alpha = 0 the smoothed CE alone
    assert LogitsKD(teacher, T, 1.0, kd_loss, eps).loss(student, images, labels, 0.0).item() == \
        pytest.approx(kd.item(), rel=1e-12)
    assert LogitsKD(teacher, T, 0.0, kd_loss, eps).loss(student, images, labels, 0.0).item() == \
        pytest.approx(ce_ls.item(), rel=1e-12)


def _soft_ce_by_hand(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean over the batch of -sum_k softmax(teacher / T)_k log softmax(student / T)_k, in float64."""
    s, t = student.double() / T, teacher.double() / T
    log_q = s - s.logsumexp(-1, keepdim=True)
    p = (t - t.logsumexp(-1, keepdim=True)).exp()
    return -(p * log_q).sum(-1).mean() * T * T


def test_training_with_a_checkpoint_teacher(tmp_path, capsys, monkeypatch):
    """kd.teacher as a checkpoint path: the run distils from it (its loss is the soft cross-entropy
    to the teacher's logits, so not the plain run's), and an unset teacher is one clear error."""
    p = tiny_recipe(tmp_path, epochs=1)
    train(load_recipe(str(p)), tmp_path / "teacher", quiet=True)
    calls = []  # a spy on the distiller: the inputs and the output of every training step's loss
    real_loss = LogitsKD.loss

    def spy(self, student_logits, images, labels, progress):
        out = real_loss(self, student_logits, images, labels, progress)
        calls.append({"logits": student_logits.detach().clone(), "images": images.clone(), "labels": labels.clone(),
                      "T": self.temperature, "alpha": self.alpha, "loss": out.detach().clone()})
        return out

    monkeypatch.setattr(LogitsKD, "loss", spy)
    sets = [f"kd={{teacher: {tmp_path / 'teacher' / 'best.pt'}, temperature: 2.0}}"]
    res = train(load_recipe(str(p), sets), tmp_path / "student", quiet=True)
    monkeypatch.setattr(LogitsKD, "loss", real_loss)
    plain = train(load_recipe(str(p)), tmp_path / "plain", quiet=True)
    assert yaml.safe_load((tmp_path / "student" / "recipe.yaml").read_text())["kd"]["teacher"].endswith("best.pt")
    assert res["epochs"] == 1
    assert rows(tmp_path / "student")[0]["train_loss"] != rows(tmp_path / "plain")[0]["train_loss"]
    # the loss of every step is the soft cross-entropy (T = 2, alpha = 1: no label term) between the
    # student's logits and the logits of the teacher checkpoint, rebuilt here from its state_dict in eval mode
    steps = res["n_train"] // 32  # drop_last batches of 32
    assert len(calls) == steps and all(c["T"] == 2.0 and c["alpha"] == 1.0 for c in calls)
    teacher = onebit.create_model("bireal_resnet20", num_classes=4, input_binarizer={"name": "reste", "o_end": 3})
    teacher.load_state_dict(torch.load(tmp_path / "teacher" / "best.pt", weights_only=True)["model"])
    teacher.eval()
    for c in (calls[0], calls[-1]):
        assert c["images"].shape == (32, 3, 32, 32) and c["logits"].shape == (32, 4)
        with torch.no_grad():
            t_logits = teacher(c["images"])
        want = _soft_ce_by_hand(c["logits"], t_logits, 2.0).item()
        assert c["loss"].item() == pytest.approx(want, rel=1e-5, abs=1e-6)
        # not a loss that ignores the teacher: the soft CE to uniform targets (= the T^2 log-sum-exp term) differs
        assert abs(want - _soft_ce_by_hand(c["logits"], torch.zeros_like(t_logits), 2.0).item()) > 1e-4
    # and the logged epoch loss is the batch-size weighted mean of exactly these losses
    logged = rows(tmp_path / "student")[0]["train_loss"]
    assert logged == pytest.approx(sum(c["loss"].item() * len(c["labels"]) for c in calls)
                                   / sum(len(c["labels"]) for c in calls), rel=1e-12)
    assert cli(["train", "--recipe", str(p), "--out", str(tmp_path / "r"), "--set", "kd={temperature: 2.0}"]) == 2
    assert "kd.teacher is not set" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the loop

def test_train_writes_run_dir_and_results(tmp_path):
    out = tmp_path / "run"
    res = train(load_recipe(str(tiny_recipe(tmp_path))), out, quiet=True)
    for f in ("recipe.yaml", "metrics.jsonl", "last.pt", "best.pt", "results.json"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "results.json").read_text())
    assert saved == res
    for key in ("recipe", "overrides", "commit", "epochs", "wall_time_s", "machine", "metrics"):
        assert key in res
    model_cfg = load_recipe(str(tiny_recipe(tmp_path)))["model"]  # the model's options, for the results table
    assert all(res["model_kwargs"][k] == v for k, v in model_cfg.items() if k != "name")
    assert res["epochs"] == 2
    r = rows(out)
    assert [x["epoch"] for x in r] == [1, 2]
    m = res["metrics"]  # final / best as logged, and best.pt is the best epoch's state
    assert m["final_val_top1"] == r[-1]["val_top1"] and m["best_val_top1"] == max(x["val_top1"] for x in r)
    assert r[m["best_epoch"] - 1]["val_top1"] == m["best_val_top1"]
    assert C.load(out / "best.pt")["epoch"] == m["best_epoch"]
    assert r[0]["reste_o"] == pytest.approx(1.0) and r[1]["reste_o"] == pytest.approx(3.0)  # o: 1 -> o_end
    model, meta = C.load_model(out / "best.pt")
    assert meta["model"] == "bireal_resnet20" and meta["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=3)))
    train(recipe, tmp_path / "a", quiet=True)
    assert train(recipe, tmp_path / "b", quiet=True, stop_after_steps=4)["interrupted"]  # mid-epoch 2
    assert train(None, tmp_path / "b", resume=True, quiet=True, stop_after_steps=3)["interrupted"]  # mid-epoch 3
    train(None, tmp_path / "b", resume=True, quiet=True)
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    keys = ("train_loss", "train_top1", "val_top1", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
    sa = C.load(tmp_path / "a" / "last.pt")["model"]
    sb = C.load(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wip_snapshot_resumes_like_the_uninterrupted_run(tmp_path, capsys):
    """scripts/wip_snapshot.py (a long run's state, committed at the end of a working session) copies
    one consistent state: a metrics row written after the last.pt it read does not travel, so a run
    resumed from the copy ends exactly as the uninterrupted run."""
    import importlib.util
    import shutil
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / "wip_snapshot.py"
    spec = importlib.util.spec_from_file_location("wip_snapshot", path)
    wip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wip)
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=3)))
    train(recipe, tmp_path / "a", quiet=True)
    run = tmp_path / "b"
    assert train(recipe, run, quiet=True, stop_after_steps=4)["interrupted"]  # 1 batch into epoch 2
    with open(run / "metrics.jsonl", "a") as f:  # as if epoch 2 had ended after last.pt was read,
        f.write(json.dumps({"stage": "main", "epoch": 2, "val_top1": -1.0}) + "\n")  # and epoch 3
        f.write('{"stage": "main", "epo')  # were being written
    (tmp_path / "wip").mkdir()
    (tmp_path / "wip" / "README.md").write_text("kept")
    (tmp_path / "wip" / "histograms.jsonl").write_text("stale")  # from an older copy: the run has none now
    (run / "histograms.jsonl").unlink()
    assert wip.main([str(run), "--dest", str(tmp_path / "wip")]) == 0
    assert "state after epoch 1 of 3 and 1 batches of epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in rows(tmp_path / "wip")] == [1]
    assert sorted(p.name for p in (tmp_path / "wip").iterdir()) == ["README.md", "best.pt", "last.pt",
                                                                    "metrics.jsonl", "recipe.yaml"]
    shutil.copytree(tmp_path / "wip", tmp_path / "c")
    (tmp_path / "c" / "README.md").unlink()
    train(None, tmp_path / "c", resume=True, quiet=True)
    keys = ("epoch", "train_loss", "train_top1", "val_top1", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in rows(tmp_path / "c")] == [[r[k] for k in keys] for r in rows(tmp_path / "a")]
    assert wip.main([str(run), "--name", "../x"]) == 2 and "must be a folder name" in capsys.readouterr().err
    # a best.pt of another epoch than the one last.pt names as best (written in between): read again, then refuse
    best = C.load(run / "best.pt")
    best["epoch"] = 99
    torch.save(best, run / "best.pt")
    with pytest.raises(RuntimeError, match="kept disagreeing"):
        wip.read_state(run, tries=2, wait=0.0)


def test_epoch_schedules_in_the_middle_of_a_run(tmp_path):
    """3 epochs: progress t = epoch / (epochs - 1) = 0, 1/2, 1, so the logged ReSTE o follows the cos
    schedule o(t) = 1 + (o_end - 1)(1 - cos(pi t / 2)); the logged lr is the lr of each epoch's last
    step (set before that step, read at the epoch's end): lr_at(step, total, warmup, lr, warmup_lr, min_lr)."""
    over = {"epochs": 3, "warmup_epochs": 2, "warmup_lr": 0.01, "min_lr": 0.001}
    res = train(load_recipe(str(tiny_recipe(tmp_path, **over))), tmp_path / "run", quiet=True)
    r = rows(tmp_path / "run")
    assert [x["progress"] for x in r] == [0.0, 0.5, 1.0]
    assert r[0]["reste_o"] == 1.0 and r[2]["reste_o"] == pytest.approx(3.0, rel=1e-15)
    assert r[1]["reste_o"] == pytest.approx(1 + (3 - 1) * (1 - math.cos(math.pi / 4)), rel=1e-15)
    spe = res["n_train"] // 32  # drop_last batches of 32 (96 synthetic images: 3)
    assert spe == 3
    total, warmup = 3 * spe, 2 * spe
    for e, row in enumerate(r):
        last_step = (e + 1) * spe - 1
        assert row["lr"] == lr_at(last_step, total, warmup, 0.05, 0.01, 0.001), e
    # the same numbers by hand: step 2 is 3/6 of the warm-up from 0.01 to 0.05; step 5 ends it at the
    # peak; step 8 is 2/3 of the way along the cosine from 0.05 down to min_lr = 0.001
    assert r[0]["lr"] == pytest.approx(0.01 + 0.04 * 3 / 6, rel=1e-12)
    assert r[1]["lr"] == pytest.approx(0.05, rel=1e-12)
    assert r[2]["lr"] == pytest.approx(0.001 + 0.049 * 0.5 * (1 + math.cos(2 * math.pi / 3)), rel=1e-12)


def test_step_progress_schedules(tmp_path):
    """train.progress: step -- t = step / (total - 1), set before each step: every epoch logs the t of
    its last step (and o at that t), and the checkpoint's meta ends at t = 1 (o = o_end on loading)."""
    res = train(load_recipe(str(tiny_recipe(tmp_path, progress="step"))), tmp_path / "run", quiet=True)
    r = rows(tmp_path / "run")
    spe = res["n_train"] // 32
    total = 2 * spe
    for e, row in enumerate(r):
        t = ((e + 1) * spe - 1) / (total - 1)
        assert row["progress"] == pytest.approx(t, rel=1e-15), e
        assert row["reste_o"] == pytest.approx(1 + 2 * (1 - math.cos(math.pi * t / 2)), rel=1e-15), e
    assert r[-1]["progress"] == 1.0
    for f in ("last.pt", "best.pt"):
        meta = C.load(tmp_path / "run" / f)["meta"]
        assert meta["progress"] == (1.0 if f == "last.pt" else r[res["metrics"]["best_epoch"] - 1]["progress"]), f
    model, _ = C.load_model(tmp_path / "run" / "last.pt")
    assert {m.o for m in model.modules() if isinstance(m, onebit.binarize.ReSTE)} == {3.0}


def test_two_stage_training_initialises_stage_two_from_stage_one(tmp_path, monkeypatch):
    p = tiny_recipe(tmp_path)
    r = yaml.safe_load(p.read_text())
    r["model"] = {"name": "reactnet_resnet20"}
    r["stages"] = [{"name": "acts", "epochs": 1, "set": {"model.weight_binarizer": None, "train.weight_decay": 1e-5}},
                   {"name": "both", "epochs": 1, "set": {"train.weight_decay": 0.0}}]
    p.write_text(yaml.safe_dump(r))
    from onebit.train.loop import Run
    ends, starts = [], []
    run_stage, load_state = Run.run_stage, C.load_state

    def spy_stage(self, si, *a):
        model = run_stage(self, si, *a)
        ends.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    def spy_load(model, state, what):
        load_state(model, state, what)
        if "initialisation from stage" in what:
            starts.append({k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(Run, "run_stage", spy_stage)
    monkeypatch.setattr(C, "load_state", spy_load)
    res = train(load_recipe(str(p)), tmp_path / "run", quiet=True)
    assert len(ends) == 2 and len(starts) == 1  # stage 2 began from stage 1's final weights
    assert starts[0].keys() == ends[0].keys() and all(torch.equal(starts[0][k], ends[0][k]) for k in ends[0])
    assert not all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])  # and then trained on
    assert [x["stage"] for x in rows(tmp_path / "run")] == ["acts", "both"]
    assert res["epochs"] == 2
    _, meta = C.load_model(tmp_path / "run" / "best.pt")
    assert meta["model_kwargs"].get("weight_binarizer", "default") != None  # noqa: E711 (stage 2 is fully binary)


def test_two_stage_distillation_builds_its_teacher_once(tmp_path, monkeypatch):
    """Every stage's teacher is checked before the first stage trains; the one built for that check is
    the one its stage then distils from (not loaded a second time)."""
    import onebit.train.loop as L
    p = tiny_recipe(tmp_path, epochs=1)
    train(load_recipe(str(p)), tmp_path / "teacher", quiet=True)
    r = yaml.safe_load(p.read_text())
    r["kd"] = {"teacher": str(tmp_path / "teacher" / "best.pt")}
    r["stages"] = [{"name": "acts", "epochs": 1, "set": {"model.weight_binarizer": None}},
                   {"name": "both", "epochs": 1}]
    p.write_text(yaml.safe_dump(r))
    built, real = [], L.build_teacher
    monkeypatch.setattr(L, "build_teacher", lambda spec: built.append(spec) or real(spec))
    res = train(load_recipe(str(p)), tmp_path / "student", quiet=True)
    assert res["epochs"] == 2 and built == [r["kd"]["teacher"]]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=3)))
    out = tmp_path / "run"
    real_ce = F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real_ce(*a, **k)
        return loss * float("nan") if calls["n"] > 5 else loss  # epoch 1 (3 steps) + val eval is clean

    monkeypatch.setattr("onebit.train.loop.F.cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(recipe, out, quiet=True)
    assert C.load(out / "last.pt")["epoch"] == 1


def test_nan_before_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    """Diverging in the first epoch: no checkpoint to keep, so the run directory goes too (the same
    command, with a lower lr, can simply be rerun) and the message says so."""
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=2)))
    monkeypatch.setattr("onebit.train.loop.F.cross_entropy", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written, so the run's files were removed"):
        train(recipe, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_non_finite_weights_with_a_finite_loss_stop_the_run(tmp_path, monkeypatch):
    """A last step of an epoch can leave NaN weights behind a finite loss: the epoch's end catches
    it, before any checkpoint or best.pt holds them."""
    import onebit.train.loop as L
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=3)))
    real = L.build_optimizer
    steps = {"n": 0}

    def poisoning_optimizer(model, tcfg):
        opt = real(model, tcfg)
        step = opt.step

        def poisoned_step(*a, **k):
            out = step(*a, **k)
            steps["n"] += 1
            if steps["n"] == 6:  # the last step of epoch 2
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            return out
        opt.step = poisoned_step
        return opt

    monkeypatch.setattr(L, "build_optimizer", poisoning_optimizer)
    with pytest.raises(TrainingDiverged, match="became non-finite in epoch 2; the last good checkpoint is"):
        train(recipe, tmp_path / "run", quiet=True)
    kept = C.load(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert len(rows(tmp_path / "run")) == 1
    assert len((tmp_path / "run" / "histograms.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    p = tiny_recipe(tmp_path, epochs=2)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(p.read_text()), "model": {"name": "resnet20"}}))
    train(load_recipe(str(p)), tmp_path / "a", quiet=True, stop_after_steps=1)
    train(load_recipe(str(other)), tmp_path / "b", quiet=True, stop_after_steps=1)
    (tmp_path / "b" / "last.pt").write_bytes((tmp_path / "a" / "last.pt").read_bytes())
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    with pytest.raises(ValueError, match="is a run of recipe 'tiny' \\(model 'bireal_resnet20'\\) but .* says "
                                         "recipe 'other' \\(model 'resnet20'\\)"):
        train(None, tmp_path / "b", resume=True, quiet=True)
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before


def test_resume_refuses_a_checkpoint_of_the_same_recipe_with_other_settings(tmp_path):
    """Same recipe name and model, another learning rate: still another run.  Where the data lives
    and the thread count may change on resume."""
    p = tiny_recipe(tmp_path, epochs=2)
    train(load_recipe(str(p)), tmp_path / "a", quiet=True, stop_after_steps=1)
    train(load_recipe(str(p), ["train.lr=0.5"]), tmp_path / "b", quiet=True, stop_after_steps=1)
    (tmp_path / "b" / "last.pt").write_bytes((tmp_path / "a" / "last.pt").read_bytes())
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    with pytest.raises(ValueError, match="another recipe than .*recipe.yaml \\(they differ in overrides, train.lr\\)"):
        train(None, tmp_path / "b", resume=True, quiet=True)
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before
    res = train(None, tmp_path / "a", resume=True, quiet=True, threads=2, data_root=str(tmp_path / "moved"))
    assert res["epochs"] == 2


def test_stage_epochs_are_set_by_index():
    r = load_recipe("reactnet-resnet20-cifar10", ["stages.0.epochs=2", "stages.1.epochs=3"])
    assert [s["epochs"] for s in r["stages"]] == [2, 3]
    with pytest.raises(ValueError, match="expected an integer"):
        load_recipe("reactnet-resnet20-cifar10", ["stages.0.epochs=2.5"])


def test_existing_run_dir_is_not_overwritten(tmp_path):
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=1)))
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="already exists; use --resume"):
        train(recipe, out, quiet=True)
    with pytest.raises(ValueError, match="cannot resume"):
        train(None, tmp_path / "empty", resume=True, quiet=True)
    assert (out / "precious.txt").read_text() == "keep"


def test_checkpoint_from_another_model_is_refused(tmp_path):
    m = onebit.create_model("resnet20")
    C.save_atomic({"model": m.state_dict(), "meta": {"model": "bireal_resnet18_cifar"}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="holds weights of another model"):
        C.load_model(tmp_path / "x.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        C.load(tmp_path / "bad.pt")


# ---------------------------------------------------------------- CLI

def make_folder(root, classes, n=3, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_cli_train_eval_and_errors(tmp_path, capsys):
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    assert cli(["train", "--recipe", str(p), "--out", str(out), "--quiet"]) == 0
    assert cli(["train", "--recipe", str(p), "--out", str(out), "--quiet"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert cli(["train", "--recipe", str(p), "--out", str(tmp_path / "r2"), "--set", "train.epochz=1"]) == 2
    assert "unknown recipe key" in capsys.readouterr().err
    # evaluate on a folder whose class folders are a subset, in another order: matched by name
    make_folder(tmp_path / "imgs", ["class_3", "class_0"])
    assert cli(["eval", str(out / "best.pt"), "--data", str(tmp_path / "imgs"), "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 6 and set(res) >= {"top1", "top5", "n", "per_class", "confusion"}
    assert res["per_class"]["class_1"] is None and res["per_class"]["class_3"] is not None
    make_folder(tmp_path / "other", ["dog"])
    assert cli(["eval", str(out / "best.pt"), "--data", str(tmp_path / "other"), "--split", "test"]) == 2
    assert "dog" in capsys.readouterr().err
    assert cli(["train", "--recipe", "reste-resnet20-cifar10", "--out", str(tmp_path / "r3")]) == 2
    assert "data.root is not set" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()  # refused at start-up: nothing written


def test_run_refused_at_start_up_can_be_rerun_corrected(tmp_path, capsys):
    """A run that fails its start-up checks (here: a KD teacher that does not exist, found only
    once the data and model are built) leaves no run directory behind, so the corrected command
    runs without --force; the failure is one line and exit code 2."""
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    bad = ["train", "--recipe", str(p), "--out", str(out), "--quiet", "--set", f"kd={{teacher: {tmp_path / 'nope.pt'}}}"]
    assert cli(bad) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not out.exists()
    assert cli(["train", "--recipe", str(p), "--out", str(out), "--quiet"]) == 0
    assert {"best.pt", "last.pt", "metrics.jsonl", "recipe.yaml", "results.json"} <= {f.name for f in out.iterdir()}


def test_force_starts_over_and_keeps_other_files(tmp_path):
    """--force restarts a finished run in its directory: the old metrics rows are gone (the files
    are appended to, so a stale row would show), files that are not the run's are kept."""
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=2)))
    out = tmp_path / "run"
    train(recipe, out, quiet=True)
    (out / "notes.txt").write_text("mine")
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    with pytest.raises(ValueError, match="already exists"):
        train(load_recipe(str(tiny_recipe(tmp_path, epochs=1))), out, quiet=True)
    assert [r["epoch"] for r in rows(out)] == [1, 2]  # refused: untouched
    train(load_recipe(str(tiny_recipe(tmp_path, epochs=1))), out, quiet=True, force=True)
    assert [r["epoch"] for r in rows(out)] == [1] and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "results.json").read_text())["epochs"] == 1


def test_refused_force_run_keeps_the_old_run(tmp_path, capsys):
    """--force removes the old run's files only once the new run starts: a --force command refused
    at start-up (here: a data root that does not exist) leaves the old run whole."""
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    assert cli(["train", "--recipe", str(p), "--out", str(out), "--quiet"]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    bad = ["train", "--recipe", str(p), "--out", str(out), "--quiet", "--force",
           "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'nope'}"]
    assert cli(bad) == 2
    assert "nope" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_force_run_failing_before_its_first_checkpoint_gives_the_old_run_back(tmp_path, monkeypatch):
    """--force moves the old run's files aside (RUN/.replaced) and deletes them at the new run's first
    checkpoint: a new run that fails in its first epoch (here: a loss that raises) restores them."""
    import onebit.train.loop as L
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    train(load_recipe(str(p)), out, quiet=True)
    (out / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def broken(*a, **k):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(L.F, "cross_entropy", broken)
        with pytest.raises(RuntimeError, match="boom"):
            train(load_recipe(str(p), ["seed=1"]), out, quiet=True, force=True)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # succeeding, the new run replaces the old one and nothing is left aside
    train(load_recipe(str(p), ["seed=1"]), out, quiet=True, force=True)
    assert not (out / L.REPLACED).exists() and (out / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["seed"] == 1 and len(rows(out)) == 1


def test_force_run_killed_before_its_first_checkpoint_is_settled_by_the_next_command(tmp_path):
    """A --force run killed outright (no exception to clean up after) leaves the old run in
    RUN/.replaced; the next command on RUN puts it back if the killed run had no checkpoint, and
    drops it if it had one."""
    import os
    import onebit.train.loop as L
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    train(load_recipe(str(p)), out, quiet=True)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (out / L.REPLACED).mkdir()  # what start_files of the killed --force run did
    for name in before:
        os.replace(out / name, out / L.REPLACED / name)
    (out / "recipe.yaml").write_text("name: the-killed-run\n")
    with pytest.raises(ValueError, match="already exists"):  # a plain rerun: refused, the old run back
        train(load_recipe(str(p)), out, quiet=True)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    (out / L.REPLACED).mkdir()  # killed after its first checkpoint: last.pt is the new run's
    (out / L.REPLACED / "metrics.jsonl").write_text("old\n")
    res = train(None, out, resume=True, quiet=True)
    assert not (out / L.REPLACED).exists() and res["epochs"] == 1


def test_mixed_image_sizes_are_refused_before_training(tmp_path, capsys):
    """Validation images of two sizes cannot be batched without a resizing eval transform: refused at
    start-up with the key to set, not after a training epoch; with it set, the run trains."""
    root = tmp_path / "data"
    make_folder(root, ["a"], n=4)
    make_folder(root, ["b"], n=4, size=40)  # train/ and test/ (the validation split here) both mixed
    p = tiny_recipe(tmp_path, epochs=1, batch_size=4)
    args = ["train", "--recipe", str(p), "--out", str(tmp_path / "run"), "--quiet", "--set", "data.name=folder",
            "--set", f"data.root={root}", "--set", "data.train_transform=cifar", "--set", "data.eval_transform=cifar"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "the validation images come in 2 sizes (32x32 to 40x40)" in err and "data.eval_transform=imagenet" in err
    assert not (tmp_path / "run").exists()
    assert cli(args + ["--set", "data.eval_transform=imagenet"]) == 0


def test_resume_needs_the_runs_recipe(tmp_path):
    """A last.pt in a directory without its recipe.yaml (or with a broken one) is not resumed blindly."""
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    train(load_recipe(str(p)), out, quiet=True)
    (out / "recipe.yaml").unlink()
    with pytest.raises(ValueError, match="has a last.pt but no recipe.yaml"):
        train(None, out, resume=True, quiet=True)
    (out / "recipe.yaml").write_text("[1, 2")
    with pytest.raises(ValueError, match="its recipe.yaml is not a recipe"):
        train(None, out, resume=True, quiet=True)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.batch_size=-2", "train.batch_size must be >= 1"),
    ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0"),
    ("train.weight_decay=-1e-4", "train.weight_decay must be >= 0"),
    ("train.norm_bias_weight_decay=-1e-3", "train.norm_bias_weight_decay must be >= 0"),
    ("train.threads=0", r"train.threads must be an integer >= 1 \(or null\), got 0"),
    ("train.device=banana", "train.device must be one of auto, cpu, cuda"),
    # keys whose default is null: their type is checked too, each error naming its key
    ("train.threads=abc", "train.threads must be an integer >= 1"),
    ("train.grad_clip=abc", "train.grad_clip must be a number > 0"),
    ("train.binary_weight_decay=abc", "train.binary_weight_decay must be a number >= 0"),
    ("data.mean=abc", "data.mean must be a list of 3 numbers"),
    ("data.mean=[0.5]", "data.mean must be a list of 3 numbers, one per RGB channel"),
    ("data.std=[1, 0, 1]", "data.std must be a list of 3 positive numbers"),
    ("data.root=5", "data.root must be a path"),
    ("train.progress=steps", "train.progress must be one of epoch, step, got 'steps'"),
    # the open sections: known keys only, and a YAML slip named as such
    ("data.randaugment.foo=1", r"unknown data.randaugment keys \['foo'\]; known: num_ops"),
    ("data.val_split.perclass=2", r"unknown data.val_split keys \['perclass'\]"),
    ("data.val_split={per_class:2}", "YAML needs a space after each colon"),
    ("data.val_split.val_count=10", "data.val_split needs exactly one of per_class and val_count"),
    ("data.val_split.seed=x", "data.val_split.seed='x': expected an int like 0, got a str"),
    ("data.val_split.seed=-1", "data.val_split.seed must be an integer >= 0"),
    ("data.val_split.per_class=0", "data.val_split.per_class must be an integer >= 1"),
])
def test_recipe_values_out_of_range_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("reste-resnet20-cifar10", [override])
    load_recipe("reste-resnet20-cifar10", ["train.device=cuda:1"])  # a device name that may exist elsewhere


def test_cli_train_refuses_before_writing(tmp_path, capsys):
    """Bad train commands: one line on stderr, exit 2, nothing written."""
    p = tiny_recipe(tmp_path, epochs=1)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: [resnet20\ntrain: {epochs: 1}\n")
    not_utf8 = tmp_path / "latin.yaml"
    not_utf8.write_bytes(b"description: caf\xe9\n")
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--recipe", str(bad_yaml), "--out", str(tmp_path / "a")], "is not valid YAML at line"),
        (["--recipe", str(not_utf8), "--out", str(tmp_path / "a")], "is not UTF-8 text"),
        (["--recipe", str(p), "--out", str(tmp_path / "a"), "--set", "train.epochs=0"], "train.epochs must be >= 1"),
        (["--recipe", str(p), "--out", str(tmp_path / "afile")], "is a file; give --out a directory"),
        (["--recipe", str(p), "--out", str(tmp_path / "a"), "--resume"], "drop --recipe"),
        (["--out", str(tmp_path / "a"), "--resume", "--force"], "drop --force"),
    ]
    typed = tmp_path / "typed.yaml"  # a recipe file's values are type-checked like overrides
    typed.write_text(yaml.safe_dump({**yaml.safe_load(p.read_text()), "train": {"epochs": "ten"}}))
    staged = tmp_path / "staged.yaml"
    staged.write_text(yaml.safe_dump({**yaml.safe_load(p.read_text()),
                                      "stages": [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 1}]}))
    late_teacher = tmp_path / "late_teacher.yaml"  # refused before the first stage trains, not after it
    late_teacher.write_text(yaml.safe_dump({**yaml.safe_load(p.read_text()), "stages": [
        {"name": "a", "epochs": 1}, {"name": "b", "epochs": 1, "set": {"kd.teacher": "zoo:fp_resnet20_cifar10"}}]}))
    cases += [
        (["--recipe", str(late_teacher), "--out", str(tmp_path / "a")], "predicts 10 classes but the data has 4"),
        (["--recipe", str(typed), "--out", str(tmp_path / "a")], "train.epochs='ten': expected an int"),
        (["--recipe", str(p), "--out", str(tmp_path / "a"), "--set", "kd.tempreature=2"], "unknown kd keys"),
        (["--recipe", str(p), "--out", str(tmp_path / "a"), "--set", "model.nokey=1"], "takes no option 'nokey'"),
        (["--recipe", str(p), "--out", str(tmp_path / "a"), "--set", "kd={teacher: zoo:fp_resnet20_cifar10}"],
         "predicts 10 classes but the data has 4"),
        (["--recipe", str(staged), "--out", str(tmp_path / "a"), "--set", "train.epochs=3"],
         "--set stages.0.epochs=E --set stages.1.epochs=E instead of train.epochs"),
        (["--recipe", str(staged), "--out", str(tmp_path / "a"), "--set", "stages.2.epochs=3"],
         "indices 0 to 1"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--recipe", str(p), "--out", str(tmp_path / "a"), "--set", "train.device=cuda"],
                      "sees no CUDA device"))
    for args, message in cases:
        assert cli(["train", *args, "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
        assert not (tmp_path / "a").exists()
    assert (tmp_path / "afile").read_text() == "x"


def test_cli_one_line_errors_for_arguments_and_files(tmp_path, capsys):
    """argparse errors, unwritable outputs and unreadable checkpoints: one line each, exit 2."""
    assert cli(["bench", "resnet20", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a positive integer" in err and "--help" in err
    assert cli(["bench", "resnet20", "--warmup", "-5"]) == 2
    assert "expected an integer >= 0" in capsys.readouterr().err
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    for name, message in [("text.pt", "cannot be read"), ("trunc.pt", "cannot be read"), ("", "is a folder")]:
        assert cli(["eval", str(tmp_path / name), "--data", "sample"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert cli(["eval", "/dev/null", "--data", "sample"]) == 2
    assert "'/dev/null' is not a regular file" in capsys.readouterr().err  # it exists
    p = tiny_recipe(tmp_path, epochs=1)
    out = tmp_path / "run"
    assert cli(["train", "--recipe", str(p), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    # --png into a folder that does not exist: refused before the evaluation
    assert cli(["eval", str(out / "best.pt"), "--data", "sample", "--png", str(tmp_path / "no" / "cm.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a model with other classes than the sample's: named, not a crash
    assert cli(["eval", str(out / "best.pt"), "--data", "sample"]) == 2
    assert "not the sample's CIFAR-10 classes" in capsys.readouterr().err


def test_yaml_reads_exponent_floats():
    r = load_recipe("reste-resnet20-cifar10", ["train.lr=1e-3", "train.weight_decay=5e-05"])
    assert r["train"]["lr"] == 1e-3 and r["train"]["weight_decay"] == 5e-5


def test_zoo_roundtrip(tmp_path, monkeypatch):
    from onebit import zoo
    out = tmp_path / "run"
    train(load_recipe(str(tiny_recipe(tmp_path, epochs=1)), ["train.label_smoothing=0.1"]), out, quiet=True)
    zdir = tmp_path / "zoo"
    zdir.mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", zdir)
    assert onebit.list_models(pretrained=True) == []
    zoo.add(out / "best.pt", "tiny_synthetic", zoo_dir=zdir)
    assert onebit.list_models(pretrained=True) == ["tiny_synthetic"]
    model = onebit.create_model("tiny_synthetic", pretrained=True)
    ref, meta = C.load_model(out / "best.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), ref(x))
    assert zoo.meta("tiny_synthetic")["class_names"] == meta["class_names"]
    assert zoo.meta("tiny_synthetic")["overrides"] == ["train.label_smoothing=0.1"]  # how the recipe was changed
    assert model.pretrained_cfg["class_names"] == meta["class_names"] and "mean" in model.pretrained_cfg
    fresh = onebit.create_model("tiny_synthetic")  # architecture only
    assert not torch.equal(fresh.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match="no zoo weights for 'resnet20'"):
        onebit.create_model("resnet20", pretrained=True)


def test_atomic_writes_get_a_new_files_usual_mode(tmp_path):
    import os
    mask = os.umask(0o022)
    try:
        C.save_atomic({"x": 1}, tmp_path / "a.pt")
        assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        C.save_atomic({"x": 1}, tmp_path / "b.pt")
        assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
    assert not list(tmp_path.glob("*.tmp"))


def test_zoo_add_refuses_to_replace_without_force(tmp_path, monkeypatch, capsys):
    from onebit import zoo
    out = tmp_path / "run"
    train(load_recipe(str(tiny_recipe(tmp_path, epochs=1))), out, quiet=True)
    zdir = tmp_path / "zoo"
    zdir.mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", zdir)
    assert cli(["zoo-add", str(out / "best.pt"), "--name", "tiny"]) == 0
    before = {p.name: p.read_bytes() for p in zdir.iterdir()}
    assert sorted(before) == ["tiny.json", "tiny.safetensors"]
    assert cli(["zoo-add", str(out / "last.pt"), "--name", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "zoo entry 'tiny' exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in zdir.iterdir()} == before  # nothing overwritten
    assert cli(["zoo-add", str(out / "last.pt"), "--name", "tiny", "--force"]) == 0
    assert sorted(p.name for p in zdir.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_cli_eval_writes_confusion_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    train(load_recipe(str(tiny_recipe(tmp_path, epochs=1))), out, quiet=True)
    make_folder(tmp_path / "imgs", ["class_0", "class_2"])
    png = tmp_path / "cm.png"
    assert cli(["eval", str(out / "best.pt"), "--data", str(tmp_path / "imgs"), "--split", "test",
                "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "class_0" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fitting_error_takes_the_weights_o_end():
    """The authors' fitting error is taken at o_end: the weight binarizer's when it is ReSTE, else the
    input binarizer's; no ReSTE, no o_end."""
    from onebit.train.diagnostics import reste_o_end
    both = {"input_binarizer": {"name": "reste", "o_end": 2}, "weight_binarizer": {"name": "reste", "o_end": 4}}
    assert reste_o_end(onebit.create_model("bireal_resnet20", **both)) == 4.0
    assert reste_o_end(onebit.create_model("bireal_resnet20", input_binarizer={"name": "reste", "o_end": 2})) == 2.0
    assert reste_o_end(onebit.create_model("bireal_resnet20")) is None


def test_metrics_carry_flip_ratio_histograms_and_indicators(tmp_path, monkeypatch):
    """The logged diagnostics, recomputed by hand: flip ratio from the latent weights at the start and
    end of each epoch, and the last epoch's indicators (at o = 3, the end of the schedule) and histogram
    from the weights saved in last.pt."""
    from onebit.layers import BinaryConv2d
    from onebit.train import diagnostics as Dg
    weights = []  # the binary convs' latent weights whenever the loop takes a sign snapshot
    snapshot = Dg.sign_snapshot

    def spy(model):
        weights.append(torch.cat([m.weight.detach().flatten().clone() for m in model.modules()
                                  if isinstance(m, BinaryConv2d)]))
        return snapshot(model)

    grads = []  # the binary convs' latent-weight gradients when the loop takes the stability variance
    variance = Dg.stability_variance

    def grad_spy(model):
        grads.append([m.weight.grad.clone() for m in model.modules() if isinstance(m, BinaryConv2d)])
        return variance(model)

    monkeypatch.setattr(Dg, "sign_snapshot", spy)
    monkeypatch.setattr(Dg, "stability_variance", grad_spy)
    out = tmp_path / "run"
    train(load_recipe(str(tiny_recipe(tmp_path, epochs=2, indicators=True))), out, quiet=True)
    r = rows(out)
    assert len(weights) == 4  # start and end of each epoch
    for i, x in enumerate(r):
        a, b = weights[2 * i], weights[2 * i + 1]
        assert x["flip_ratio"] == pytest.approx(((a >= 0) != (b >= 0)).sum().item() / a.numel(), abs=1e-12)
    assert r[0]["flip_ratio"] > 0
    model, _ = C.load_model(out / "last.pt")
    w = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, BinaryConv2d)])
    assert torch.equal(w, weights[-1]) and w.numel() == 267_264
    # ReSTE at o = 3 (t = 1.5, m = 0.1), by hand in float64: f(x) = sign(x) |x|^(1/3) on x clipped to t;
    # gradient 0 beyond t, (1/3) |x|^(-2/3) on (m, t], the chord slope m^(1/3) / m on [0, m]
    assert r[-1]["reste_o"] == pytest.approx(3.0)
    x = w.double()
    xc, a, sgn = x.clamp(-1.5, 1.5), x.abs(), torch.where(x >= 0, 1.0, -1.0).double()
    err = (sgn - sgn * xc.abs() ** (1 / 3)).abs().mean().item()
    g = torch.where(a <= 0.1, 0.1 ** (1 / 3) / 0.1, a.clamp(min=0.1) ** (-2 / 3) / 3).masked_fill(a > 1.5, 0.0)
    assert r[-1]["estimating_error"] == pytest.approx(err, rel=1e-9)
    assert r[-1]["gradient_instability"] == pytest.approx(g.var().item(), rel=1e-9)
    # the authors' pair (ReSTE code, utils/tools.py): per-layer L2 of |w|^(1/3) sign(w) - sign(w), summed
    # (unclipped, sign(0) = 0), and per-layer var(|dL/dw|) of the last step's gradients, summed
    layers = [m.weight.detach().double().flatten() for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(layers) == 18 and len(grads) == 2 and len(grads[-1]) == 18

    def fit3(vs):  # at o_end = 3
        return sum(((torch.sign(v) * v.abs() ** (1 / 3) - torch.sign(v)) ** 2).sum().sqrt().item() for v in vs)

    assert r[-1]["fitting_error"] == pytest.approx(fit3(layers), rel=1e-9)
    first = weights[1].double().split([v.numel() for v in layers])  # end of epoch 1: o = 1, but o_end = 3
    assert r[0]["reste_o"] == 1.0 and r[0]["fitting_error"] == pytest.approx(fit3(first), rel=1e-9)
    var = sum(gr.double().abs().flatten().var().item() for gr in grads[-1])
    assert var > 0 and r[-1]["stability_var"] == pytest.approx(var, rel=1e-9)
    hist = [json.loads(l) for l in (out / "histograms.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    counts = torch.histc(w.clamp(-1.5, 1.5), bins=60, min=-1.5, max=1.5)
    assert hist[-1]["counts"] == [int(c) for c in counts.tolist()] and sum(hist[-1]["counts"]) == 267_264


def test_resume_may_change_data_root_and_threads_only(tmp_path, capsys):
    from onebit.cli import main
    recipe = load_recipe(str(tiny_recipe(tmp_path, epochs=2)))
    out = tmp_path / "run"
    assert train(recipe, out, quiet=True, stop_after_steps=2)["interrupted"]
    assert main(["train", "--out", str(out), "--resume", "--set", "train.epochs=5"]) == 2
    assert "only --set data.root=PATH, --set train.threads=N (N >= 1) and --set kd.compile" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--set", "train.threads=0"]) == 2
    assert "'train.threads=0'" in capsys.readouterr().err
    old = torch.get_num_threads()
    try:
        assert main(["train", "--out", str(out), "--resume", "--quiet", "--set", "train.threads=1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
    assert C.load(out / "last.pt")["recipe"]["train"]["threads"] == 1 and rows(out)[-1]["epoch"] == 2


def test_kd_compile_compiles_the_teacher_alone(tmp_path, capsys, monkeypatch):
    """kd.compile: true compiles the teacher of an eager student (train.compile false); unset, the
    teacher follows train.compile; --resume may switch it (an execution setting, like the thread
    count), only on a run that has a teacher; anything but a boolean or null is refused."""
    import onebit.train.loop as L
    p = tiny_recipe(tmp_path, epochs=2)
    train(load_recipe(str(p)), tmp_path / "teacher", quiet=True)
    teacher = f"teacher: {tmp_path / 'teacher' / 'best.pt'}"
    made = []

    class Spy(Teacher):  # records what the trainer asks for; builds an eager teacher (compiling takes long)
        def __init__(self, model, compile=False):
            made.append(compile)
            super().__init__(model)

    monkeypatch.setattr(L, "Teacher", Spy)
    out = tmp_path / "student"
    assert train(load_recipe(str(p), [f"kd={{{teacher}, compile: true}}"]), out, quiet=True,
                 stop_after_steps=2)["interrupted"]
    assert made == [True] and load_recipe(str(p), [f"kd={{{teacher}}}"])["train"]["compile"] is False
    assert train(None, out, resume=True, quiet=True, compile_teacher=False, stop_after_steps=2)["interrupted"]
    assert made == [True, False] and C.load(out / "last.pt")["recipe"]["kd"]["compile"] is False
    # last.pt (false) now differs from recipe.yaml (true) in kd.compile alone, which a resume accepts
    assert cli(["train", "--out", str(out), "--resume", "--quiet", "--set", "kd.compile=true"]) == 0
    assert made == [True, False, True] and rows(out)[-1]["epoch"] == 2
    train(load_recipe(str(p), [f"kd={{{teacher}}}"]), tmp_path / "plain_kd", quiet=True, stop_after_steps=1)
    assert made[-1] is False  # unset: as train.compile (false here)
    assert cli(["train", "--out", str(out), "--resume", "--set", "kd.compile=yes"]) == 2
    assert "not 'kd.compile=yes'" in capsys.readouterr().err
    nokd = tmp_path / "nokd"
    assert train(load_recipe(str(p)), nokd, quiet=True, stop_after_steps=1)["interrupted"]
    assert cli(["train", "--out", str(nokd), "--resume", "--set", "kd.compile=true"]) == 2
    assert "this run distils from no teacher" in capsys.readouterr().err
    with pytest.raises(ValueError, match="kd.compile must be true, false or null"):
        load_recipe(str(p), [f"kd={{{teacher}, compile: 1}}"])


def test_eval_val_split_is_the_runs_own_holdout(tmp_path, capsys):
    """`onebit eval RUN/best.pt --data ROOT --split val` on a folder without val/ evaluates the seeded
    hold-out of train/ that the run validated on: the same images, hence the run's own val top-1."""
    make_folder(tmp_path / "imgs", ["a", "b", "c", "d"], n=6)
    p = tiny_recipe(tmp_path, epochs=1, batch_size=8)
    r = yaml.safe_load(p.read_text())
    r["data"] = {"name": "folder", "root": str(tmp_path / "imgs"), "val_split": {"per_class": 2, "seed": 3},
                 "train_transform": "none", "eval_transform": "none"}
    p.write_text(yaml.safe_dump(r))
    out = tmp_path / "run"
    train(load_recipe(str(p)), out, quiet=True)
    assert cli(["eval", str(out / "best.pt"), "--data", str(tmp_path / "imgs"), "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 8 and res["top1"] == pytest.approx(rows(out)[-1]["val_top1"])
    assert cli(["eval", str(out / "best.pt"), "--data", str(tmp_path / "imgs"), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 24  # an existing folder is taken as it is


@pytest.mark.slow
def test_compiled_forward_follows_the_estimator_schedule():
    """torch.compile (train.compile) guards on the estimators: after set_progress moves ReSTE's o,
    the compiled model's gradients are the eager model's at the new o, not stale ones."""
    _check_compiled_forward_follows_the_estimator_schedule("inductor")


def test_compiled_forward_follows_the_estimator_schedule_aot_eager():
    """The same with backend="aot_eager" (the guards and retracing are dynamo's, not inductor's): fast
    enough for the default run."""
    _check_compiled_forward_follows_the_estimator_schedule("aot_eager")


def _check_compiled_forward_follows_the_estimator_schedule(backend):
    from onebit.binarize import set_progress
    from onebit.layers import BinaryConv2d
    torch.manual_seed(0)
    spec = {"name": "reste", "o_end": 3}
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1),
                            BinaryConv2d(8, 8, 3, padding=1, input_binarizer=spec, weight_binarizer=spec),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4))
    x = torch.randn(4, 3, 8, 8)
    compiled = torch.compile(m, backend=backend)

    def grads(f):
        m.zero_grad()
        f(x).square().sum().backward()
        return [p.grad.clone() for p in m.parameters()]

    seen = []
    for t in (0.0, 0.5, 1.0):
        set_progress(m, t)
        eager, comp = grads(m), grads(compiled)
        for a, b in zip(eager, comp):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        seen.append(eager[0])
    assert not torch.allclose(seen[0], seen[2])  # o did change the gradients


@pytest.mark.slow
def test_compiled_training_run(tmp_path):
    """train.compile=true trains (ReSTE, o moving every epoch), logs the same first loss as eager
    mode to float rounding (one step per epoch: later steps drift apart, as sign flips amplify
    rounding differences between the compiled and eager kernels), and
    writes checkpoints with the model's own parameter names that load into the registry model."""
    runs = {}
    for flag in (False, True):
        out = tmp_path / f"run-{flag}"
        train(load_recipe(str(tiny_recipe(tmp_path, epochs=2, batch_size=96, compile=flag))), out, quiet=True)
        runs[flag] = out
    eager, comp = (C.load(runs[f] / "last.pt")["model"] for f in (False, True))
    assert eager.keys() == comp.keys()
    assert rows(runs[True])[0]["train_loss"] == pytest.approx(rows(runs[False])[0]["train_loss"], rel=1e-5)
    assert rows(runs[True])[-1]["reste_o"] == pytest.approx(3.0)
    model, _ = C.load_model(runs[True] / "best.pt")
    assert not any(k.startswith("_orig_mod") for k in comp) and model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_cli_eval_on_cifar_pickles_and_download_flags(tmp_path, monkeypatch, capsys):
    """`onebit eval CKPT --data ROOT` on the CIFAR python pickles (classes matched by name, test split);
    --download offline says what to do; train --download is for CIFAR recipes and new runs only."""
    import urllib.error
    from pathlib import Path
    from onebit.data import CIFAR10_CLASSES
    import onebit.data.cifar as cifar_module
    from test_data import fake_cifar10  # (tests/ is on sys.path under pytest's default import mode)
    fake_cifar10(tmp_path)
    md5 = cifar_module.CIFAR["cifar10"].md5  # the fake files pass as the official ones
    monkeypatch.setattr(cifar_module, "file_md5", lambda p: md5.get(Path(p).name, ""))
    names = list(reversed(CIFAR10_CLASSES))  # the model's own class order
    model = onebit.create_model("resnet20").eval()
    C.save_atomic({"model": model.state_dict(), "meta": {
        "model": "resnet20", "model_kwargs": {}, "class_names": names, "mean": [0.5] * 3, "std": [0.25] * 3,
        "input_size": [3, 32, 32]}}, tmp_path / "m.pt")
    assert cli(["eval", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 4 and list(res["per_class"]) == names
    assert cli(["eval", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--split", "val"]) == 2
    assert "use --split test" in capsys.readouterr().err
    monkeypatch.setattr(cifar_module.urllib.request, "urlopen",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    assert cli(["eval", str(tmp_path / "m.pt"), "--data", str(tmp_path / "none"), "--split", "test",
                "--download"]) == 2
    assert "could not download" in capsys.readouterr().err
    p = tiny_recipe(tmp_path, epochs=1)
    assert cli(["train", "--recipe", str(p), "--out", str(tmp_path / "r"), "--download"]) == 2
    assert "--download fetches CIFAR-10/100" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert cli(["train", "--out", str(tmp_path / "r"), "--resume", "--download"]) == 2
    assert "a resumed run reads the data it was started with" in capsys.readouterr().err


def test_eval_classes_are_matched_by_name():
    from onebit.data import ArrayDataset
    ds = ArrayDataset(np.zeros((3, 2, 2, 3), np.uint8), [0, 1, 2], ["a", "b", "c"])
    out = ds.in_class_order(["c", "a", "b"])
    assert out.labels.tolist() == [1, 2, 0] and out.class_names == ["c", "a", "b"]
    assert ds.in_class_order(["a", "b", "c"]) is ds
    with pytest.raises(ValueError, match="are not the model's"):
        ds.in_class_order(["a", "b", "d"])


def test_eval_hold_out_error_gives_evals_own_advice(tmp_path):
    """`onebit eval --split val` on a folder without val/ takes the model's own hold-out of train/;
    when a class is too small for it, the advice is eval's (--split test), not a recipe key."""
    from onebit.cli import eval_dataset
    from onebit.data import DataError
    make_folder(tmp_path, ["a", "b"], n=3)
    with pytest.raises(DataError, match=r"cannot hold out 10 of them; .* has no val/ folder.*--split test"):
        eval_dataset(str(tmp_path), "val", ["a", "b"], {"per_class": 10, "seed": 0})
    assert len(eval_dataset(str(tmp_path), "val", ["a", "b"], {"per_class": 1, "seed": 0})) == 2
