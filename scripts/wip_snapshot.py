"""Copy a long run's state into results/wip/NAME, to be committed at the end of a working session.

    python scripts/wip_snapshot.py RUN_DIR [--name NAME | --dest DIR]

scripts/long_runs.sh resumes a run from results/wip/NAME on a fresh machine (a new session's VM has
none of the last one's files).  The copy is one consistent state, whatever the trainer is doing
meanwhile: last.pt is read once (it is written atomically); best.pt must be the best epoch that
last.pt names (else both are read again: a new best was written in between); metrics.jsonl and
histograms.jsonl are cut to the epochs that last.pt has finished (a line still being written is
left out), so that the resumed run appends after them and not after rows it will write again.
Everything is read before anything in the destination changes; its README.md stays.
Prints one line for the wip README: where the run stands and its best epoch so far.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

from onebit.train.loop import stage_list

ROOT = Path(__file__).resolve().parent.parent


SNAPSHOT = ("last.pt", "best.pt", "recipe.yaml", "metrics.jsonl", "histograms.jsonl")


def rows_up_to(path: Path, stage: int, epoch: int, stage_names: list) -> str:
    """The lines of a per-epoch JSONL file up to (stage, epoch), in the file's order; a last line
    that does not parse is one the trainer is still writing, and is left out."""
    lines = path.read_text().splitlines()
    keep = []
    for i, line in enumerate(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        s = stage_names.index(r["stage"]) if r.get("stage") in stage_names else 0
        if (s, r["epoch"]) <= (stage, epoch):
            keep.append(line)
    return "".join(line + "\n" for line in keep)


def _load(raw: bytes) -> dict:
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def read_state(run: Path, tries: int = 20, wait: float = 3.0) -> tuple[dict, dict]:
    """(last.pt's checkpoint, {file: bytes}) with best.pt the best epoch that last.pt names."""
    for _ in range(tries):
        raw = {"last.pt": (run / "last.pt").read_bytes()}  # one read: it may be replaced meanwhile
        ckpt = _load(raw["last.pt"])
        if not (run / "best.pt").is_file():
            return ckpt, raw
        raw["best.pt"] = (run / "best.pt").read_bytes()
        best, named = _load(raw["best.pt"]), ckpt.get("best") or {}
        names = [st["name"] for st in stage_list(ckpt["recipe"])]
        if (names[int(best["stage"])], int(best["epoch"])) == (named.get("stage"), named.get("epoch")):
            return ckpt, raw
        time.sleep(wait)  # a new best.pt came after this last.pt: read both again
    raise RuntimeError(f"{run}: best.pt and last.pt kept disagreeing on the best epoch; try again")


def snapshot(run: Path, dest: Path) -> str:
    ckpt, files = read_state(run)
    # epoch: the stage's finished epochs; batch > 0: a checkpoint taken that far into the next one
    stage, epoch, batch = int(ckpt["stage"]), int(ckpt["epoch"]), int(ckpt["batch"])
    stages = stage_list(ckpt["recipe"])
    names = [st["name"] for st in stages]
    for f in ("metrics.jsonl", "histograms.jsonl"):
        if (run / f).is_file():
            files[f] = rows_up_to(run / f, stage, epoch, names).encode()
    if (run / "recipe.yaml").is_file():
        files["recipe.yaml"] = (run / "recipe.yaml").read_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    for f, data in files.items():  # everything is read: now write, each file atomically
        tmp = dest / (f + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest / f)
    for f in SNAPSHOT:  # what the run no longer has goes from the copy too
        if f not in files and (dest / f).exists():
            (dest / f).unlink()
    best = ckpt.get("best") or {}
    where = f"after epoch {epoch} of {stages[stage]['epochs']}" + (f" and {batch} batches of epoch {epoch + 1}"
                                                                 if batch else "")
    if len(names) > 1:
        where += f" of stage {names[stage]} ({stage + 1} of {len(names)})"
    return (f"{run.name}: state {where}; best validation {best.get('val_top1')}% at epoch {best.get('epoch')}"
            f" -> {dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run directory (holds last.pt)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--name", help="folder under results/wip (default: the run directory's name)")
    where.add_argument("--dest", type=Path, help="another folder to copy into")
    args = ap.parse_args(argv)
    if not (args.run / "last.pt").is_file():
        print(f"wip_snapshot: {args.run / 'last.pt'} does not exist (no run there yet?)", file=sys.stderr)
        return 2
    name = args.name or args.run.resolve().name
    if "/" in name or name in (".", ".."):
        print(f"wip_snapshot: --name {name!r} must be a folder name, not a path (use --dest for a path)",
              file=sys.stderr)
        return 2
    print(snapshot(args.run, args.dest or ROOT / "results" / "wip" / name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
