"""Shared by the experiment scripts: one training run that survives interruptions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from onebit.train import checkpoint, load_recipe, train

EXECUTION = ("data.root=", "train.threads=")  # where the data lives and the threads: may change between sessions


def _settings(recipe: str, sets: list[str]) -> tuple[str, list[str]]:
    return recipe, sorted(s for s in sets if not s.startswith(EXECUTION))


def _check_same(run: Path, found: tuple[str, list[str]], wanted: tuple[str, list[str]]) -> None:
    """A run directory left by another experiment (another recipe or other overrides) is refused."""
    if found != wanted:
        raise SystemExit(f"{run} holds a run of {found[0]} with {found[1]}, not of {wanted[0]} with {wanted[1]}; "
                         f"give the experiment another --runs directory (or move that run away)")


def run_or_resume(recipe: str, sets: list[str], run: Path) -> Optional[dict]:
    """The results.json of ``run``: read when the run has finished, else trained from ``recipe``
    with the ``--set`` overrides ``sets`` (resumed from run/last.pt when there is one, so the
    experiment can be spread over sessions).  None when training was interrupted.  A finished or
    started run must be of the same recipe and overrides (data.root and train.threads aside)."""
    run = Path(run)
    wanted = _settings(recipe, sets)
    if (run / "results.json").is_file():
        res = json.loads((run / "results.json").read_text())
        _check_same(run, _settings(res["recipe"], res["overrides"]), wanted)
        return res
    resume = (run / "last.pt").is_file()
    if resume:
        saved = checkpoint.load(run / "last.pt")["recipe"]
        _check_same(run, _settings(saved["name"], saved["overrides"]), wanted)
    res = train(None if resume else load_recipe(recipe, sets), run, resume=resume)
    return None if res.get("interrupted") else res
