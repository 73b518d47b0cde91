"""benchmarks/experiment.py: an experiment's run directories hold its own runs, or are refused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from experiment import run_or_resume  # noqa: E402


def test_a_finished_run_of_other_settings_is_refused(tmp_path):
    """The same recipe and overrides (data.root and train.threads may differ) give the recorded
    results; another override or recipe is refused with the run named, not silently reported."""
    run = tmp_path / "reste_cos3-s0"
    run.mkdir()
    res = {"recipe": "reste-resnet20-cifar10", "overrides": ["train.epochs=15", "seed=0", "data.root=/a",
                                                             "train.threads=2"], "metrics": {"best_val_top1": 64.1}}
    (run / "results.json").write_text(json.dumps(res))
    got = run_or_resume("reste-resnet20-cifar10", ["seed=0", "train.epochs=15", "data.root=/b"], run)
    assert got["metrics"]["best_val_top1"] == 64.1
    with pytest.raises(SystemExit, match=r"reste_cos3-s0 holds a run of reste-resnet20-cifar10 with "
                                         r"\['seed=0', 'train.epochs=15'\], not of reste-resnet20-cifar10 with "
                                         r"\['model.pre_bn_act=identity', 'seed=0', 'train.epochs=15'\]"):
        run_or_resume("reste-resnet20-cifar10", ["seed=0", "train.epochs=15", "model.pre_bn_act=identity"], run)
    with pytest.raises(SystemExit, match="not of ste-resnet20-cifar10"):
        run_or_resume("ste-resnet20-cifar10", ["seed=0", "train.epochs=15"], run)


def test_a_started_run_of_other_settings_is_refused(tmp_path):
    """An interrupted run (last.pt, no results.json) is resumed only by the experiment that started it."""
    from onebit.train import checkpoint
    run = tmp_path / "ste-s1"
    run.mkdir()
    checkpoint.save_atomic({"model": {}, "meta": {}, "recipe": {"name": "ste-resnet20-cifar10",
                                                                 "overrides": ["seed=1", "train.epochs=15"]}},
                           run / "last.pt")
    with pytest.raises(SystemExit, match="ste-s1 holds a run of ste-resnet20-cifar10"):
        run_or_resume("ste-resnet20-cifar10", ["seed=1", "train.epochs=30"], run)
