"""One self-contained HTML page per training run (``onebit report RUN_DIR``).

    from onebit.analysis.report import write_report
    write_report("runs/reste")                 # -> runs/reste/report.html
    write_report("elsewhere/best.pt")          # a bare checkpoint: the parts it can draw

The page holds, each in its own section:

- training curves from ``metrics.jsonl`` (loss, top-1, learning rate, flip ratio, ReSTE's o
  and, when logged, the estimator indicators; x = epoch across all stages);
- the confusion matrix of ``best.pt`` (else ``last.pt``) on the run's validation data;
- 10 correctly and 10 incorrectly classified validation images (paper 003, Fig. 8-9);
- the model's complexity table (``onebit summary``) at its input size;
- the metrics of ``results.json``.

The figures are embedded as base64 PNGs, so the HTML file alone is the report; they are also
written next to it (``curves.png``, ``confusion.png``, ``examples.png``) for a README.
A part that cannot be drawn (no checkpoint, no metrics, data not found) never stops the
report: the page lists it under "Missing parts" with the reason.

The validation data is rebuilt from the run's recipe (``recipe.yaml``, or the recipe stored
in the checkpoint) with ``onebit.data.build_dataset``; ``data=ROOT`` (an image folder with
``val/`` or ``test/``) or ``data="sample"`` replaces it.
"""
from __future__ import annotations

import base64
import html
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_report", "curves_png", "examples_png", "select_examples", "validation_data"]

CHECKPOINT_NAMES = ("best.pt", "last.pt")


# ----------------------------------------------------------------------------- inputs

def _read_metrics(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {i + 1} is not JSON (a run killed while writing?)") from None
    if not rows:
        raise ValueError(f"{path} has no rows yet (the first epoch has not finished)")
    return rows


def _full_recipe(run: Path | None, ckpt_path: Path | None) -> tuple[dict | None, str]:
    """The training recipe (with its data section) and where it came from."""
    import yaml
    if run is not None and (run / "recipe.yaml").is_file():
        return yaml.safe_load((run / "recipe.yaml").read_text()), str(run / "recipe.yaml")
    if ckpt_path is not None:
        from ..train import checkpoint as C
        recipe = C.load(ckpt_path).get("recipe")
        if isinstance(recipe, dict) and isinstance(recipe.get("data"), dict):
            return recipe, f"the recipe stored in {ckpt_path.name}"
    return None, ""


def validation_data(recipe: dict | None, meta: dict, data: str | None = None):
    """(validation ArrayDataset, transform, description).

    ``data``: ``"sample"`` or an image folder ROOT (``ROOT/val`` or else ``ROOT/test``),
    prepared as ``onebit eval`` does (the checkpoint's normalisation and input size);
    None: the validation split of the recipe's data section, with its eval transform.
    Raises ValueError (or DataError) saying what is missing.
    """
    from .. import data as D
    size = int(meta["input_size"][-1])
    if data is not None:
        if data == "sample":
            ds, desc = D.load_sample("val"), "the embedded CIFAR-10 sample (val)"
        else:
            root = Path(data)
            split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
            if split is None:
                raise ValueError(f"data folder {data!r} has neither val/ nor test/")
            ds, desc = D.load_image_folder(root, split, class_names=meta["class_names"]), f"{root / split}"
        if list(ds.class_names) != list(meta["class_names"]):
            raise ValueError(f"the classes of {desc} ({', '.join(ds.class_names[:4])}, ...) are not the model's "
                             f"({', '.join(meta['class_names'][:4])}, ...)")
        tf = D.Normalize(meta["mean"], meta["std"])
        if not ds.is_stacked or ds.images.shape[1] != size:
            tf = D.Compose([D.Resize(int(round(size / 0.875)) if size > 64 else size), D.CenterCrop(size), tf])
        return ds, tf, desc
    if recipe is None:
        raise ValueError("no recipe (no recipe.yaml, none stored in the checkpoint) says which data the model "
                         "was trained on: give data=ROOT (--data ROOT) or data='sample'")
    dcfg = {k: v for k, v in recipe["data"].items() if v is not None}
    name = dcfg.get("name", "sample")
    if name in ("folder", "cifar10", "cifar100") and not dcfg.get("root"):
        raise ValueError(f"the recipe reads {name} data but has no data.root: give data=ROOT (--data ROOT)")
    if name == "sample":  # the sample's val split alone (no need to decode the 5,000 training images)
        val, desc = D.load_sample("val"), "the embedded CIFAR-10 sample (val)"
    else:
        _, val = D.build_dataset(dcfg)
        if val is None:
            raise ValueError(f"the recipe's data ({name}, root {dcfg.get('root')!r}) has no validation split: "
                             f"give data=ROOT with a val/ or test/ folder")
        desc = f"{name}" + (f" at {dcfg['root']}" if dcfg.get("root") else "") + " (validation split)"
    from ..train.loop import build_transforms
    return val, build_transforms(recipe["data"])[1], desc


# ----------------------------------------------------------------------------- figures

def curves_png(rows: list[dict], path, title: str = "") -> Path:
    """Training curves of metrics.jsonl rows; x is the epoch counted across all stages."""
    from ..analysis_plots import _pyplot
    plt = _pyplot()
    x = np.arange(1, len(rows) + 1)

    def series(key):
        return np.array([r.get(key, np.nan) if r.get(key) is not None else np.nan for r in rows], dtype=float)

    def has(key):
        return any(r.get(key) is not None for r in rows)

    panels = [("loss", [("train_loss", "train"), ("val_loss", "val")], None),
              ("top-1 accuracy (%)", [("train_top1", "train"), ("val_top1", "val")], None),
              ("learning rate (end of epoch)", [("lr", None)], None),
              ("weight flip ratio", [("flip_ratio", None)], None)]
    if has("reste_o"):
        panels.append(("ReSTE power o", [("reste_o", None)], None))
    if has("estimating_error") or has("gradient_instability"):
        panels.append(("ReSTE indicators", [("estimating_error", "estimating error")],
                       [("gradient_instability", "gradient instability")]))
    panels = [p for p in panels if any(has(k) for k, _ in p[1] + (p[2] or []))]
    ncols = 3 if len(panels) > 4 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    stages = [r.get("stage", "main") for r in rows]
    bounds = [i for i in range(1, len(rows)) if stages[i] != stages[i - 1]]
    marker = "o" if len(rows) <= 30 else None
    segments = list(zip([0] + bounds, bounds + [len(rows)]))

    def draw(ax, key, name, **kw):  # one line per stage: no line across a stage boundary
        y = series(key)
        for j, (s, e) in enumerate(segments):
            ax.plot(x[s:e], y[s:e], marker=marker, ms=3, label=name if j == 0 else None, **kw)

    for ax, (label, keys, right) in zip(axes.flat, panels):
        for i, (key, name) in enumerate(keys):
            if has(key):
                draw(ax, key, name, color=f"C{i}")
        if right:
            ax2 = ax.twinx()
            for key, name in right:
                if has(key):
                    draw(ax2, key, name, color="C3", ls="--")
            ax2.set_ylabel(right[0][1], color="C3")
            ax.set_ylabel(keys[0][1], color="C0")
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
        elif any(name for _, name in keys):
            ax.legend(fontsize=8, loc="best")
        ax.set_title(label, fontsize=10, pad=14 if bounds else 6)
        ax.set_xlim(0.5, len(rows) + 0.5)
        ax.set_xlabel("epoch" + (" (all stages)" if bounds else ""))
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        if len(rows) <= 20:
            ax.set_xticks(x)
        for b in bounds:
            ax.axvline(b + 0.5, color="gray", ls=":", lw=1)
        if bounds:  # stage names along the top of each panel
            for s, e in segments:
                ax.text((s + e) / 2 + 0.5, 1.01, stages[s], transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=7, color="dimgray", clip_on=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def select_examples(model, dataset, transform, mean, std, k: int = 10, batch_size: int = 256,
                    seed: int = 0) -> dict:
    """Up to ``k`` correctly and ``k`` incorrectly classified images, spread over the classes.

    Images are visited in a seeded random order; each class gets at most ceil(k / classes)
    places in a group until the group would otherwise stay short.  Returns {"correct":
    [...], "incorrect": [...]} of dicts with ``image`` (HWC float RGB in 0..1, the model's
    input un-normalised), ``true`` and ``pred`` (class indices).
    """
    from .. import data as D
    model.eval()
    device = next(model.parameters()).device
    loader = D.BatchLoader(dataset, batch_size, shuffle=True, transform=transform, seed=seed)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    cap = max(1, math.ceil(k / max(1, dataset.num_classes)))
    chosen = {"correct": [], "incorrect": []}
    spare = {"correct": [], "incorrect": []}
    for x, y in loader:
        pred = model(x.to(device)).float().argmax(1).cpu()
        for i in range(len(y)):
            group = "correct" if pred[i] == y[i] else "incorrect"
            if len(chosen[group]) >= k:
                continue
            per_class = sum(e["true"] == int(y[i]) for e in chosen[group])
            target = chosen[group] if per_class < cap else spare[group]
            if target is spare[group] and len(spare[group]) >= k:
                continue
            img = (x[i:i + 1] * s + m).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            target.append({"image": img, "true": int(y[i]), "pred": int(pred[i])})
        if all(len(v) >= k for v in chosen.values()):
            break
    for g in chosen:
        chosen[g] += spare[g][:k - len(chosen[g])]
    return chosen


def examples_png(examples: dict, class_names, path, cols: int = 5, title: str = "") -> Path:
    """A grid of the correct (green titles) and incorrect (red: true and predicted) examples."""
    from ..analysis_plots import _pyplot
    plt = _pyplot()
    groups = [("correctly classified", examples.get("correct", []), "darkgreen"),
              ("misclassified", examples.get("incorrect", []), "firebrick")]
    rows_per = [max(1, math.ceil(len(items) / cols)) for _, items, _ in groups]
    heights = [r if items else 0.3 for r, (_, items, _) in zip(rows_per, groups)]  # an empty group: one text line
    fig = plt.figure(figsize=(1.7 * cols, 2.0 * sum(heights) + 0.7 + (0.3 if title else 0)), layout="constrained")
    fig.get_layout_engine().set(wspace=0.03)
    subfigs = fig.subfigures(2, 1, height_ratios=[h + 0.35 for h in heights], hspace=0.04)
    for sf, (label, items, colour), nr in zip(subfigs, groups, rows_per):
        sf.suptitle(f"{label} ({len(items)})", fontsize=11, fontweight="bold", color=colour)
        axes = sf.subplots(nr, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        if not items:
            axes[0, 0].text(0, 0.5, "none in the validation data", fontsize=10, va="center",
                            transform=axes[0, 0].transAxes)
        for ax, e in zip(axes.flat, items):
            img = np.asarray(e["image"])
            rep = max(1, int(np.ceil(96 / max(img.shape[:2]))))  # nearest-neighbour upscaling
            if rep > 1:
                img = img.repeat(rep, 0).repeat(rep, 1)
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, interpolation="nearest",
                      cmap="gray" if img.shape[-1] == 1 else None)
            t, p = class_names[e["true"]], class_names[e["pred"]]
            ax.set_title(t if t == p else f"true: {t}\npred: {p}", fontsize=9, color=colour)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- the page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:12px;line-height:1.3}
img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:14px} td,th{border:1px solid #ddd;padding:.25em .7em;text-align:left}
.missing{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
.note{color:#666;font-size:.9em}
"""


class _Page:
    def __init__(self):
        self.sections: list[str] = []
        self.missing: list[tuple[str, str, str]] = []  # (anchor, title, reason)

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>')

    def miss(self, anchor: str, title: str, reason: str) -> None:
        self.missing.append((anchor, title, reason))
        self.add(anchor, title, f'<p class="missing"><b>Not drawn:</b> {html.escape(reason)}</p>')


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if isinstance(e, ValueError) else f"{type(e).__name__}: {msg}"


def _table(pairs) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in pairs)
    return f"<table>{cells}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4f}".rstrip("0").rstrip(".")
    if v is None:
        return "-"
    return v if isinstance(v, str) else json.dumps(v)


def write_report(run_dir, out=None, data: str | None = None, batch_size: int = 256) -> Path:
    """Write one self-contained HTML report of a run directory (or of a bare checkpoint).

    ``run_dir``: a run directory (``recipe.yaml``, ``metrics.jsonl``, ``best.pt`` / ``last.pt``,
    ``results.json``) or a checkpoint file.  A checkpoint inside a run directory (one with
    ``metrics.jsonl``) is reported with that run's curves and results; elsewhere only the parts
    that need just the checkpoint are drawn.  ``out``: the HTML path (default
    ``RUN_DIR/report.html``; for a checkpoint file ``<its folder>/report.html``); the PNGs
    go next to it.  ``data``: ``"sample"`` or an image folder ROOT replacing the recipe's
    validation data.  Returns the HTML path.
    """
    src = Path(run_dir)
    if not src.exists():
        raise ValueError(f"{str(src)!r} does not exist (give a run directory or a checkpoint file)")
    if src.is_file():
        ckpt_path = src
        run = src.parent if (src.parent / "metrics.jsonl").is_file() else None
    else:
        run = src
        ckpt_path = next((src / n for n in CHECKPOINT_NAMES if (src / n).is_file()), None)
    out = Path(out) if out is not None else (src if src.is_dir() else src.parent) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent
    page = _Page()
    title = str(run if run is not None else ckpt_path)

    # (a) training curves
    rows = None
    if run is None:
        page.miss("curves", "Training curves", f"{src} is a checkpoint without its run directory: there is no "
                                               f"metrics.jsonl to draw curves from")
    elif not (run / "metrics.jsonl").is_file():
        page.miss("curves", "Training curves", f"{run / 'metrics.jsonl'} does not exist (no epoch finished yet, "
                                               f"or not a run directory)")
    else:
        try:
            rows = _read_metrics(run / "metrics.jsonl")
            stages = list(dict.fromkeys(r.get("stage", "main") for r in rows))
            p = curves_png(rows, folder / "curves.png", title=f"{run.name}: {len(rows)} epochs"
                           + (f", stages {' / '.join(stages)}" if len(stages) > 1 else ""))
            last = rows[-1]
            summary = _table([(k, last.get(k)) for k in ("stage", "epoch", "train_loss", "train_top1", "val_loss",
                                                         "val_top1", "val_top5", "flip_ratio", "reste_o", "lr",
                                                         "img_per_s") if k in last])
            page.add("curves", "Training curves",
                     f"<p>{len(rows)} epochs from <code>{html.escape(str(run / 'metrics.jsonl'))}</code>"
                     + (f"; stage boundaries are dotted lines" if len(stages) > 1 else "") + ".</p>\n"
                     + _img(p, "training curves") + "\n<p class='note'>Last epoch:</p>\n" + summary)
        except Exception as e:  # noqa: BLE001 -- any failure becomes a 'missing' line
            page.miss("curves", "Training curves", _reason(e))

    # the checkpoint
    model = meta = None
    ckpt_error = None
    if ckpt_path is None:
        ckpt_error = f"no checkpoint ({' or '.join(CHECKPOINT_NAMES)}) in {src}"
    else:
        try:
            from ..train.checkpoint import load_model
            model, meta = load_model(ckpt_path)
            if torch.cuda.is_available():
                model = model.cuda()
        except Exception as e:  # noqa: BLE001
            ckpt_error = f"checkpoint {ckpt_path} cannot be loaded: {_reason(e)}"

    # (b) confusion matrix and (c) examples
    if model is None:
        page.miss("confusion", "Confusion matrix", ckpt_error)
        page.miss("examples", "Classified examples", ckpt_error)
    else:
        try:
            recipe, recipe_src = (None, "") if data is not None else _full_recipe(run, ckpt_path)
            ds, tf, desc = validation_data(recipe, meta, data)
            from ..data import BatchLoader
            from ..train.evaluate import evaluate
            res = evaluate(model, BatchLoader(ds, batch_size, transform=tf), list(meta["class_names"]))
        except Exception as e:  # noqa: BLE001
            reason = f"validation data unavailable: {_reason(e)}"
            page.miss("confusion", "Confusion matrix", reason)
            page.miss("examples", "Classified examples", reason)
        else:
            from ..analysis_plots import confusion_png
            origin = f", rebuilt from {recipe_src}" if recipe_src else ""
            try:
                confusion_png(res, folder / "confusion.png")
                per_class = _table([(k, None if v is None else f"{v:.1f}%") for k, v in res["per_class"].items()])
                page.add("confusion", "Confusion matrix",
                         f"<p><code>{html.escape(ckpt_path.name)}</code> on {html.escape(desc)}{html.escape(origin)}:"
                         f" top-1 <b>{res['top1']:.2f}%</b>, top-5 {res['top5']:.2f}%, loss {res['loss']:.4f}, "
                         f"{res['n']} images. Rows: true class; columns: predicted; colour: row-normalised.</p>\n"
                         + _img(folder / "confusion.png", "confusion matrix")
                         + "\n<details><summary>Per-class accuracy</summary>\n" + per_class + "</details>")
            except Exception as e:  # noqa: BLE001
                page.miss("confusion", "Confusion matrix", _reason(e))
            try:
                ex = select_examples(model, ds, tf, meta["mean"], meta["std"], k=10, batch_size=batch_size)
                examples_png(ex, list(meta["class_names"]), folder / "examples.png")
                page.add("examples", "Classified examples",
                         f"<p>{len(ex['correct'])} correctly and {len(ex['incorrect'])} incorrectly classified "
                         f"images of {html.escape(desc)}, drawn at random and spread over the classes; shown as the "
                         f"model sees them (after the evaluation transform, un-normalised), enlarged without "
                         f"smoothing.</p>\n" + _img(folder / "examples.png", "classified examples"))
            except Exception as e:  # noqa: BLE001
                page.miss("examples", "Classified examples", _reason(e))

    # (d) complexity
    if model is None:
        page.miss("summary", "Model summary", ckpt_error)
    else:
        try:
            from .complexity import complexity
            size = tuple(int(v) for v in meta["input_size"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = complexity(model, size).table(hide_empty=True)
            page.add("summary", "Model summary",
                     f"<p><code>{html.escape(str(meta.get('model')))}</code> at input "
                     f"{'x'.join(map(str, size))} (as <code>onebit summary</code> prints it).</p>\n"
                     f"<pre>{html.escape(table)}</pre>")
        except Exception as e:  # noqa: BLE001
            page.miss("summary", "Model summary", _reason(e))

    # (e) results.json
    if run is None:
        page.miss("results", "Results", f"{src} is a checkpoint without its run directory: there is no "
                                        f"results.json")
    elif not (run / "results.json").is_file():
        page.miss("results", "Results", f"{run / 'results.json'} does not exist (the run has not finished"
                                        f"{', or was interrupted' if rows else ''})")
    else:
        try:
            results = json.loads((run / "results.json").read_text())
            metrics = results.get("metrics", {})
            head = [(k, results.get(k)) for k in ("recipe", "model", "epochs", "wall_time_s", "n_train", "n_val",
                                                  "commit") if k in results]
            page.add("results", "Results",
                     _table(list(metrics.items()) + head)
                     + "\n<details><summary>results.json</summary>\n<pre>"
                     + html.escape(json.dumps(results, indent=2)) + "</pre></details>")
        except Exception as e:  # noqa: BLE001
            page.miss("results", "Results", _reason(e))

    # header
    info = []
    if meta is not None:
        info += [("model", meta.get("model")), ("recipe", meta.get("recipe")),
                 ("classes", len(meta.get("class_names", []))), ("input size", "x".join(map(str, meta["input_size"])))]
    if ckpt_path is not None:
        info.append(("checkpoint", str(ckpt_path)))
    if run is not None:
        info.append(("run directory", str(run)))
    missing = ""
    if page.missing:
        items = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a>: {html.escape(r)}</li>" for a, t, r in page.missing)
        missing = f'<div class="missing"><b>Missing parts ({len(page.missing)}):</b><ul>{items}</ul></div>'
    doc = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
           f"<title>onebit report: {html.escape(title)}</title><style>{CSS}</style></head><body>\n"
           f"<h1>onebit report</h1><p class='note'>{html.escape(title)} &middot; generated "
           f"{time.strftime('%Y-%m-%d %H:%M')}</p>\n{_table(info) if info else ''}\n{missing}\n"
           + "\n".join(page.sections) + "\n</body></html>\n")
    out.write_text(doc, encoding="utf-8")
    return out

