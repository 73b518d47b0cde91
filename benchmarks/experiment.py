"""Shared by the experiment scripts: one training run that survives interruptions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from onebit.train import load_recipe, train


def run_or_resume(recipe: str, sets: list[str], run: Path) -> Optional[dict]:
    """The results.json of ``run``: read when the run has finished, else trained from ``recipe``
    with the ``--set`` overrides ``sets`` (resumed from run/last.pt when there is one, so the
    experiment can be spread over sessions).  None when training was interrupted."""
    run = Path(run)
    if (run / "results.json").is_file():
        return json.loads((run / "results.json").read_text())
    resume = (run / "last.pt").is_file()
    res = train(None if resume else load_recipe(recipe, sets), run, resume=resume)
    return None if res.get("interrupted") else res
