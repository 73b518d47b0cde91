"""The training loop: one loop for every model and recipe.

    from onebit.train import train, load_recipe
    results = train(load_recipe("reste-resnet20-cifar10", ["data.root=/data/cifar10"]), "runs/reste")

The run directory receives ``recipe.yaml``, ``metrics.jsonl`` (one JSON row per epoch),
``last.pt`` (every epoch, and on interruption at the current batch), ``best.pt`` (best
validation top-1) and, at the end, ``results.json``.  ``resume=True`` continues from
``last.pt`` exactly: model, optimizer, epoch and batch position, RNG state, schedules, and
the partial sums of an interrupted epoch, so an interrupted run ends with the same
metrics as an uninterrupted one.  Schedules are functions of progress: t = epoch /
(epochs - 1) (or step / (steps - 1) with ``train.progress: step``), so the last epoch
trains at t = 1.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from .. import data as D
from ..binarize import set_progress
from ..models import create_model
from . import checkpoint as C
from . import diagnostics
from .distill import LogitsKD, Teacher
from .evaluate import evaluate
from .optim import build_optimizer, lr_at, set_lr
from .recipe import apply_overrides, check_values, with_defaults


class TrainingDiverged(RuntimeError):
    pass


# ----------------------------------------------------------------------------- set-up pieces

def machine_info() -> dict:
    cpu, flags = platform.processor(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name"))
        flags = sorted({f for f in ("avx2", "avx512f", "avx512vpopcntdq") if f" {f}" in text})
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_flags": flags, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def data_stats(data_cfg: dict) -> tuple[list, list]:
    if data_cfg["mean"] is not None and data_cfg["std"] is not None:
        return list(data_cfg["mean"]), list(data_cfg["std"])
    if data_cfg["name"] == "cifar100":
        return list(D.CIFAR100_MEAN), list(D.CIFAR100_STD)
    if data_cfg["train_transform"] == "imagenet":
        return list(D.IMAGENET_MEAN), list(D.IMAGENET_STD)
    return list(D.CIFAR10_MEAN), list(D.CIFAR10_STD)


def build_transforms(data_cfg: dict):
    """(train transform, eval transform) from the recipe's data section."""
    mean, std = data_stats(data_cfg)
    size = data_cfg["image_size"]
    norm = D.Normalize(mean, std)
    ra = data_cfg.get("randaugment")
    extra = [D.RandAugment(**ra)] if ra else []
    kind = data_cfg["train_transform"]
    if kind == "cifar":
        train = D.Compose([D.RandomCrop(size, padding=4), D.RandomHorizontalFlip(0.5), *extra, norm])
    elif kind == "imagenet":
        train = D.Compose([D.RandomResizedCrop(size), D.RandomHorizontalFlip(0.5), *extra, norm])
    elif kind == "none":
        train = norm
    else:
        raise ValueError(f"unknown data.train_transform {kind!r}; allowed: cifar, imagenet, none")
    kind = data_cfg["eval_transform"]
    if kind in ("cifar", "none"):
        ev = norm
    elif kind == "imagenet":
        ev = D.Compose([D.Resize(int(round(size / 0.875))), D.CenterCrop(size), norm])
    else:
        raise ValueError(f"unknown data.eval_transform {kind!r}; allowed: cifar, imagenet, none")
    return train, ev


def build_teacher(spec: str) -> nn.Module:
    """A teacher from a checkpoint path, ``zoo:NAME`` or a registry name (pretrained)."""
    if spec.startswith("zoo:"):
        return create_model(spec[4:], pretrained=True)
    if Path(spec).suffix in (".pt", ".pth") or Path(spec).is_file():
        return C.load_model(spec)[0]
    return create_model(spec, pretrained=True)


def stage_list(recipe: dict) -> list[dict]:
    """[{name, epochs, recipe}] -- one stage unless the recipe has ``stages``."""
    if not recipe.get("stages"):
        return [{"name": "main", "epochs": recipe["train"]["epochs"], "recipe": recipe}]
    out = []
    for i, st in enumerate(recipe["stages"]):
        if not isinstance(st, dict) or "epochs" not in st:
            raise ValueError(f"recipe stage {i} must be a mapping with 'epochs' (and optional 'name', 'set')")
        sets = [f"{k}={json.dumps(v)}" for k, v in (st.get("set") or {}).items()]
        r = apply_overrides({**recipe, "stages": None}, sets + [f"train.epochs={int(st['epochs'])}"])
        check_values(r)
        out.append({"name": st.get("name", f"stage{i + 1}"), "epochs": int(st["epochs"]), "recipe": r})
    return out


def _seed(*parts: int) -> int:
    import numpy as np
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------- the run

# What --resume may change between sessions (execution settings, not the recipe)
RESUME_SETTABLE = ("data.root", "train.threads", "kd.compile")


def _dotted(recipe: dict) -> dict:
    """{"section.key": value} for the recipe's sections, {"key": value} for its other entries."""
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in recipe.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


def _check_same_run(ckpt_recipe: dict, out: Path) -> None:
    """--resume: last.pt must be this directory's run (its recipe.yaml, all of it but where the data
    lives and the thread count), not a file copied from another run or another version of it."""
    mine = out / "recipe.yaml"
    what = f"cannot resume: {out} has a last.pt but"
    if not mine.is_file():
        raise ValueError(f"{what} no recipe.yaml to check it against; put back the run's recipe.yaml "
                         f"(or start a new run)")
    try:
        here = yaml.safe_load(mine.read_text())
    except yaml.YAMLError as e:
        here = e
    if not isinstance(here, dict):
        raise ValueError(f"{what} its recipe.yaml is not a recipe (a YAML mapping); put back the run's recipe.yaml")
    a = (ckpt_recipe.get("name"), (ckpt_recipe.get("model") or {}).get("name"))
    b = (here.get("name"), (here.get("model") or {}).get("name"))
    if a != b:
        raise ValueError(f"cannot resume: {out / 'last.pt'} is a run of recipe {a[0]!r} (model {a[1]!r}) but "
                         f"{mine} says recipe {b[0]!r} (model {b[1]!r}); put the checkpoint back in its own run")
    ca, cb = _dotted(with_defaults(ckpt_recipe)), _dotted(with_defaults(here))  # keys added since: defaults
    diff = sorted(k for k in set(ca) | set(cb) if k not in RESUME_SETTABLE and ca.get(k) != cb.get(k))
    if diff:
        raise ValueError(f"cannot resume: {out / 'last.pt'} was trained with another recipe than {mine} "
                         f"(they differ in {', '.join(diff)}); put the checkpoint back in its own run")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def _check_batchable(ds, kind: str, key: str, what: str) -> None:
    """Images of several sizes form batches only through a transform that resizes or crops them."""
    if ds is None or ds.is_stacked:
        return
    sizes = sorted({tuple(im.shape[:2]) for im in ds.images})
    if len(sizes) > 1:
        (h0, w0), (h1, w1) = sizes[0], sizes[-1]
        raise ValueError(f"the {what} images come in {len(sizes)} sizes ({h0}x{w0} to {h1}x{w1}) and "
                         f"{key}={kind} does not resize them, so they cannot form batches; use --set {key}=imagenet "
                         f"(resize and crop to data.image_size) or give images of one size")


def _check_teacher_classes(teacher: nn.Module, name: str, num_classes: int, size: int) -> None:
    """The teacher's logits must have one entry per class of the data (checked on one blank image)."""
    with torch.no_grad():
        n = teacher(torch.zeros(1, 3, size, size)).shape[-1]
    if n != num_classes:
        raise ValueError(f"kd.teacher {name!r} predicts {n} classes but the data has {num_classes}; "
                         f"distill from a teacher trained on the same classes")


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "histograms.jsonl", "results.json")  # what --force replaces
REPLACED = ".replaced"  # --force: the old run's files wait here until the new run's first checkpoint


class Run:
    """State and files of one training run (possibly several stages)."""

    def __init__(self, recipe: dict, out_dir, resume: bool = False, force: bool = False, quiet: bool = False,
                 stop_after_steps: int | None = None, data_root: str | None = None, threads: int | None = None,
                 compile_teacher: bool | None = None):
        self.recipe, self.out = recipe, Path(out_dir)
        self.quiet, self.stop_after_steps = quiet, stop_after_steps
        self.teachers: dict[tuple, nn.Module] = {}  # built once: checked up front, then used by its stage
        last = self.out / "last.pt"
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"run directory {str(self.out)!r} is a file; give --out a directory")
        self._settle_replaced()
        self.replace_old = False  # --force over an existing run: its files go when training starts
        if resume:
            if not last.is_file():
                raise ValueError(f"cannot resume: {last} does not exist (start the run without --resume)")
        elif self.out.exists() and any(self.out.iterdir()):
            if not force:
                raise ValueError(f"run directory {str(self.out)!r} already exists; use --resume to continue it "
                                 f"or --force to start over in it")
            self.replace_old = True
        self.resume_state = C.load(last) if resume else None
        if self.resume_state is not None:
            _check_same_run(self.resume_state["recipe"], self.out)
            self.recipe = with_defaults(self.resume_state["recipe"])
            if data_root is not None:  # the data may have moved between sessions
                self.recipe["data"]["root"] = data_root
            if threads is not None:  # the machine may have changed too (an execution setting, not the recipe)
                self.recipe["train"]["threads"] = threads
            if compile_teacher is not None:  # also an execution setting: the same teacher, compiled or not
                if not self.recipe.get("kd"):
                    raise ValueError("cannot resume with kd.compile: this run distils from no teacher (its recipe has no kd)")
                self.recipe["kd"] = {**self.recipe["kd"], "compile": compile_teacher}
        self.interrupted = False
        self.started = resume  # the run directory holds this run's files (see start_files)
        self.made_dir = False  # start_files created the directory (not there before)

    def start_files(self) -> None:
        """Create the run directory and its recipe.yaml once everything has been checked and training
        is about to begin, so that a run refused at start-up (no data root, a bad model option, a
        missing teacher) leaves nothing behind and the same command, corrected, can simply be rerun.
        With --force the old run's files move to RUN/.replaced here, and are deleted only once the new
        run has written its first checkpoint: a --force run refused or failing before that gets them
        back (forget_files)."""
        if not self.started:
            if self.replace_old:
                keep = self.out / REPLACED
                keep.mkdir()
                for name in RUN_FILES + ("recipe.yaml",):
                    if (self.out / name).exists():
                        os.replace(self.out / name, keep / name)
            self.made_dir = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.yaml").write_text(yaml.safe_dump(self.recipe, sort_keys=False))
            self.started = True

    def _settle_replaced(self) -> None:
        """RUN/.replaced left by a --force run that was killed (SIGKILL, out of memory): before its
        first checkpoint, the old run comes back; after it, the old files go."""
        keep = self.out / REPLACED
        if not keep.is_dir():
            return
        if (self.out / "last.pt").exists():
            shutil.rmtree(keep)
            return
        for f in keep.iterdir():
            os.replace(f, self.out / f.name)
        keep.rmdir()
        if not self.quiet:
            print(f"{self.out}: a --force run stopped before its first checkpoint; the run it was replacing is "
                  f"back in place", flush=True)

    def forget_files(self) -> None:
        """A new run that failed before its first checkpoint: remove what start_files and the first
        epoch wrote, so that the same command, corrected, can simply be rerun."""
        if self.started and self.resume_state is None and not (self.out / "last.pt").exists():
            for name in RUN_FILES + ("recipe.yaml",):
                if (self.out / name).exists():
                    (self.out / name).unlink()
            self._settle_replaced()  # --force: the old run comes back
            if self.made_dir and not any(self.out.iterdir()):
                self.out.rmdir()
            self.started = False

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def _on_signal(self, signum, frame):
        self.interrupted = True

    def run(self) -> dict:
        recipe = self.recipe
        tcfg = recipe["train"]
        if tcfg["threads"]:
            torch.set_num_threads(int(tcfg["threads"]))
        torch.manual_seed(int(recipe["seed"]))
        dcfg = recipe["data"]
        if dcfg["name"] in ("folder", "cifar10", "cifar100") and not dcfg["root"]:
            raise ValueError(f"recipe {recipe['name']!r} reads {dcfg['name']} data but data.root is not set: "
                             f"add --set data.root=PATH")
        train_ds, val_ds = D.build_dataset({k: v for k, v in dcfg.items() if v is not None})
        self.train_ds, self.val_ds = train_ds, val_ds
        if dcfg["eval_transform"] != "imagenet":  # found now, not after a whole epoch at the first validation
            _check_batchable(val_ds, dcfg["eval_transform"], "data.eval_transform", "validation")
        if dcfg["train_transform"] == "none":
            _check_batchable(train_ds, "none", "data.train_transform", "training")
        stages = stage_list(recipe)
        if any(st["recipe"]["train"]["tensorboard"] for st in stages):
            _summary_writer()
        start_stage = self.resume_state["stage"] if self.resume_state else 0
        for stage in stages[start_stage + 1:]:  # the first stage's teacher is checked as it starts
            self.check_teacher(stage["recipe"])
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        t0 = time.time() - (self.resume_state.get("wall_time", 0.0) if self.resume_state else 0.0)
        self.t0 = t0
        fresh = self.resume_state is None
        try:
            prev_state = None
            for si in range(start_stage, len(stages)):
                model = self.run_stage(si, stages[si], prev_state)
                if self.interrupted:
                    self.log(f"interrupted: state saved in {self.out / 'last.pt'}; continue with --resume")
                    return {"interrupted": True}
                prev_state = {k: v.clone() for k, v in model.state_dict().items()}
                self.resume_state = None
        except BaseException:
            if fresh:
                self.forget_files()
            raise
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return self.write_results(time.time() - t0)

    def check_teacher(self, recipe: dict) -> nn.Module | None:
        """The recipe's KD teacher (None without kd), refused if it is not set or predicts another number
        of classes than the data has: checked for every stage before the first one trains."""
        kd = recipe.get("kd")
        if not kd:
            return None
        if not kd.get("teacher"):
            raise ValueError("kd.teacher is not set: give a checkpoint path, zoo:NAME or a registry name "
                             "(--set kd.teacher=...)")
        spec, size = str(kd["teacher"]), recipe["data"]["image_size"]
        if (spec, size) not in self.teachers:
            teacher = build_teacher(spec)
            _check_teacher_classes(teacher, spec, self.train_ds.num_classes, size)
            self.teachers[spec, size] = teacher
        return self.teachers[spec, size]

    def run_stage(self, si: int, stage: dict, prev_state: dict | None) -> nn.Module:
        recipe, tcfg = stage["recipe"], stage["recipe"]["train"]
        epochs = stage["epochs"]
        mcfg = dict(recipe["model"])
        name = mcfg.pop("name")
        mcfg.setdefault("num_classes", self.train_ds.num_classes)
        model = create_model(name, **mcfg)
        device = torch.device("cuda" if tcfg["device"] == "auto" and torch.cuda.is_available()
                              else ("cpu" if tcfg["device"] == "auto" else tcfg["device"]))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"train.device={tcfg['device']} but torch sees no CUDA device here; "
                             f"use --set train.device=cpu (or auto)")
        use_amp = bool(tcfg["amp"]) and device.type == "cuda"
        if prev_state is not None:
            C.load_state(model, prev_state, f"stage {si} initialisation from stage {si - 1}")
        model.to(device)
        opt = build_optimizer(model, tcfg)
        kd = recipe.get("kd")
        distiller = None
        if kd:
            # an eager student may still distil from a compiled teacher (kd.compile): ReSTE's fused
            # training ops run eager, and its teacher's forward is 1.6x faster compiled
            compile_teacher = tcfg["compile"] if kd.get("compile") is None else kd["compile"]
            teacher = Teacher(self.check_teacher(recipe).to(device), compile=compile_teacher)
            distiller = LogitsKD(teacher, kd.get("temperature", 1.0),
                                 kd.get("alpha", 1.0), kd.get("loss", "soft_ce"), tcfg["label_smoothing"])
        # the training forward; evaluation and checkpoints use the model itself (compiled graphs are
        # guarded on the estimators' schedules, so a changed ReSTE o recompiles rather than going stale)
        forward = torch.compile(model) if tcfg["compile"] else model
        train_tf, eval_tf = build_transforms(recipe["data"])
        seed = int(recipe["seed"])
        loader = D.BatchLoader(self.train_ds, tcfg["batch_size"], shuffle=True, transform=train_tf,
                               seed=_seed(seed, si), drop_last=True)
        val_loader = (D.BatchLoader(self.val_ds, tcfg["eval_batch_size"], transform=eval_tf)
                      if self.val_ds is not None else None)
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise ValueError(f"batch_size {tcfg['batch_size']} is larger than the training set ({len(self.train_ds)})")
        total = epochs * steps_per_epoch
        warmup = int(round(tcfg["warmup_epochs"] * steps_per_epoch))
        self.start_files()
        writer = self.tensorboard() if tcfg["tensorboard"] else None

        start_epoch, start_batch, running, best, history = 0, 0, None, None, []
        rs = self.resume_state
        if rs is not None and rs["stage"] == si:
            C.load_state(model, {k: v.to(device) for k, v in rs["model"].items()}, str(self.out / "last.pt"))
            opt.load_state_dict(rs["optimizer"])
            start_epoch, start_batch, running = rs["epoch"], rs["batch"], rs.get("running")
            best, history = rs.get("best"), rs.get("history", [])
            torch.set_rng_state(rs["rng"])
            self.log(f"resuming stage {stage['name']} at epoch {start_epoch + 1}, batch {start_batch}")
        self.meta = {"model": name, "model_kwargs": mcfg, "class_names": list(self.train_ds.class_names),
                     "mean": data_stats(recipe["data"])[0], "std": data_stats(recipe["data"])[1],
                     "input_size": [3, recipe["data"]["image_size"], recipe["data"]["image_size"]],
                     "recipe": recipe["name"], "progress": 0.0}
        tag = f"[{stage['name']}] " if len(stage_list(self.recipe)) > 1 else ""
        for epoch in range(start_epoch, epochs):
            if tcfg["progress"] == "epoch":
                t = epoch / max(1, epochs - 1)
                set_progress(model, t)
                self.meta["progress"] = t
            loader.set_epoch(epoch, start_batch)
            sums = running or {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0,
                               "signs": diagnostics.sign_snapshot(model)}
            model.train()
            from tqdm import tqdm
            bar = tqdm(loader, total=steps_per_epoch, initial=start_batch, disable=self.quiet or None,
                       desc=f"{tag}epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
            batch = start_batch
            t_epoch = time.time()
            for x, y in bar:
                step = epoch * steps_per_epoch + batch
                if tcfg["progress"] == "step":
                    t = step / max(1, total - 1)
                    set_progress(model, t)
                    self.meta["progress"] = t
                set_lr(opt, lr_at(step, total, warmup, tcfg["lr"], tcfg["warmup_lr"], tcfg["min_lr"]))
                target = y
                mix = recipe["data"]
                if mix["mixup"] or mix["cutmix"]:
                    g = torch.Generator().manual_seed(_seed(seed, si, epoch, batch, 7))
                    use_cutmix = mix["cutmix"] > 0 and (not mix["mixup"] or torch.rand((), generator=g) < 0.5)
                    fn = D.cutmix if use_cutmix else D.mixup
                    x, target = fn(x, y, mix["cutmix"] if use_cutmix else mix["mixup"],
                                   num_classes=self.train_ds.num_classes, generator=g,
                                   smoothing=tcfg["label_smoothing"])
                x, y, target = x.to(device, non_blocking=True), y.to(device), target.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = forward(x)
                    if distiller is not None:
                        loss = distiller.loss(logits, x, target, self.meta["progress"])
                    else:
                        loss = F.cross_entropy(logits, target, label_smoothing=0.0 if target.dim() > 1
                                               else tcfg["label_smoothing"])
                lv = loss.item()
                if not math.isfinite(lv):
                    raise TrainingDiverged(f"loss became {lv} at epoch {epoch + 1}, batch {batch}; {self.kept()} "
                                           f"(lower train.lr or set train.grad_clip)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg["grad_clip"]:
                    nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
                opt.step()
                sums["loss"] += lv * len(y)
                sums["correct"] += (logits.argmax(1) == y).sum().item()
                sums["n"] += len(y)
                batch += 1
                if not self.quiet and bar.disable and (batch % tcfg["log_every"] == 0):
                    self.log(f"{tag}epoch {epoch + 1}/{epochs} batch {batch}/{steps_per_epoch} "
                             f"loss {sums['loss'] / sums['n']:.4f}")
                elapsed = sums["time"] + time.time() - t_epoch
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", acc=f"{100 * sums['correct'] / sums['n']:.1f}",
                                img_s=f"{(batch - start_batch) * len(y) / max(1e-9, time.time() - t_epoch):.0f}")
                self.steps_done = getattr(self, "steps_done", 0) + 1
                if self.stop_after_steps is not None and self.steps_done >= self.stop_after_steps:
                    self.interrupted = True
                if self.interrupted and batch < steps_per_epoch:
                    sums["time"] = elapsed
                    self.save_last(model, opt, si, epoch, batch, sums, best, history)
                    bar.close()
                    return model
            bar.close()
            bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
            if bad is not None:
                raise TrainingDiverged(f"parameter {bad} became non-finite in epoch {epoch + 1}; {self.kept()} "
                                       f"(lower train.lr or set train.grad_clip)")
            epoch_time = sums["time"] + time.time() - t_epoch
            row = {"stage": stage["name"], "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                   "progress": self.meta["progress"], "train_loss": sums["loss"] / sums["n"],
                   "train_top1": 100.0 * sums["correct"] / sums["n"], "epoch_time": epoch_time,
                   "img_per_s": sums["n"] / max(1e-9, epoch_time)}
            row["flip_ratio"] = diagnostics.flip_ratio(sums["signs"], diagnostics.sign_snapshot(model))
            o = next((m.o for m in model.modules() if isinstance(getattr(m, "o", None), float)), None)
            if o is not None:
                row["reste_o"] = o
            if tcfg["indicators"]:  # onebit's pair at the current o, then the authors' (grads of the last step)
                row.update({k: v for k, v in diagnostics.estimator_indicators(
                    diagnostics.latent_weights(model), o or 1.0).items() if k != "o"})
                row["fitting_error"] = diagnostics.fitting_error(model, diagnostics.reste_o_end(model) or o or 1.0)
                row["stability_var"] = diagnostics.stability_variance(model)
            if val_loader is not None:
                ev = evaluate(model, val_loader, list(self.train_ds.class_names))
                if not math.isfinite(ev["loss"]):
                    raise TrainingDiverged(f"validation loss became {ev['loss']} after epoch {epoch + 1}; "
                                           f"{self.kept()} (lower train.lr or set train.grad_clip)")
                row.update(val_top1=ev["top1"], val_top5=ev["top5"], val_loss=ev["loss"])
                is_best = best is None or ev["top1"] > best["val_top1"]
            else:
                is_best = True
            history.append(row)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, float):
                        writer.add_scalar(f"{stage['name']}/{k}", v, epoch + 1)
            if is_best:
                best = dict(row)
            with open(self.out / "histograms.jsonl", "a") as f:  # (after the checks above: a stopped epoch writes nothing)
                f.write(json.dumps({"stage": stage["name"], "epoch": epoch + 1,
                                    **diagnostics.latent_histogram(model)}) + "\n")
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            self.log(f"{tag}epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%"
                     + (f"  val {row['val_top1']:.2f}%" if "val_top1" in row else "")
                     + f"  {row['img_per_s']:.0f} img/s  {epoch_time:.0f}s")
            start_batch, running = 0, None
            self.save_last(model, opt, si, epoch + 1, 0, None, best, history)
            if is_best and si == len(stage_list(self.recipe)) - 1:
                shutil.copyfile(self.out / "last.pt", self.out / "best.pt.tmp")
                os.replace(self.out / "best.pt.tmp", self.out / "best.pt")
            if self.interrupted:
                return model
        self.history, self.best, self.model = history, best, model
        self.all_history = getattr(self, "all_history", []) + history
        return model

    def kept(self) -> str:
        """What a diverged run leaves: its last good checkpoint, or nothing."""
        last = self.out / "last.pt"
        if last.exists():
            return f"the last good checkpoint is {last}"
        return "no checkpoint was written, so the run's files were removed"

    def tensorboard(self):
        return _summary_writer()(str(self.out / "tensorboard"))

    def save_last(self, model, opt, si, epoch, batch, running, best, history) -> None:
        state = {"model": model.state_dict(), "meta": self.meta, "optimizer": opt.state_dict(), "stage": si,
                 "epoch": epoch, "batch": batch, "running": running, "best": best, "history": history,
                 "rng": torch.get_rng_state(), "recipe": self.recipe, "wall_time": time.time() - self.t0}
        C.save_atomic(state, self.out / "last.pt")
        if (self.out / REPLACED).is_dir():  # the new run has a checkpoint: --force's old files can go
            shutil.rmtree(self.out / REPLACED)

    def write_results(self, wall: float) -> dict:
        rows = [json.loads(l) for l in (self.out / "metrics.jsonl").read_text().splitlines() if l.strip()]
        final = rows[-1]
        last_stage = [r for r in rows if r["stage"] == final["stage"]]
        best = max(last_stage, key=lambda r: r.get("val_top1", r["train_top1"]))
        results = {
            "recipe": self.recipe["name"],
            "overrides": self.recipe.get("overrides", []),
            "model": self.meta["model"],
            "model_kwargs": self.meta["model_kwargs"],
            "commit": git_commit(),
            "epochs": len(rows),
            "wall_time_s": round(wall, 1),
            "machine": machine_info(),
            "data": {k: self.recipe["data"][k] for k in ("name", "root", "val_split")},
            "n_train": len(self.train_ds),
            "n_val": len(self.val_ds) if self.val_ds is not None else 0,
            "metrics": {"final_val_top1": final.get("val_top1"), "final_val_top5": final.get("val_top5"),
                        "best_val_top1": best.get("val_top1"), "best_epoch": best["epoch"],
                        "final_train_top1": final["train_top1"], "final_train_loss": final["train_loss"]},
        }
        (self.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results


def train(recipe: dict, out_dir, resume: bool = False, force: bool = False, quiet: bool = False,
          stop_after_steps: int | None = None, data_root: str | None = None, threads: int | None = None,
          compile_teacher: bool | None = None) -> dict:
    """Train ``recipe`` into ``out_dir``; returns the results dict (also written to results.json).

    On resume the recipe stored in the run is used; ``data_root`` may point it at data
    that moved, ``threads`` may change the torch thread count and ``compile_teacher`` whether the KD
    teacher runs compiled (kd.compile).  ``stop_after_steps`` simulates an interruption (as SIGINT/SIGTERM would) after that many
    optimizer steps: the state is saved to last.pt and {"interrupted": True} is returned.
    """
    return Run(recipe, out_dir, resume, force, quiet, stop_after_steps, data_root, threads, compile_teacher).run()
