"""Regenerate the README's result tables from result files (never typed by hand).

    python scripts/results_table.py            # rewrites the blocks between the markers in README.md
    python scripts/results_table.py --check    # exit 1 if README.md is out of date

The zoo's table reads its entries' JSON files (src/onebit/zoo/*.json, written by `onebit zoo-add`).
The runs' table reads results/runs/*.json: each is the results.json that `onebit train` wrote into
a run directory, copied here when the run finished (scripts/record_run.sh does the copy).  The BinaryViT Table 3 block reads results/binaryvit_table3.json
(benchmarks/binaryvit_table3.py); the ReSTE ablation block results/reste_ablation.json
(benchmarks/reste_ablation.py).  docs/deploy.md's table of the zoo's packed twins reads
results/pack_exactness.json (benchmarks/pack_exactness.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
TABLE3_START, TABLE3_END = "<!-- table3:start -->", "<!-- table3:end -->"
ABLATION_START, ABLATION_END = "<!-- ablation:start -->", "<!-- ablation:end -->"
ZOO_START, ZOO_END = "<!-- zoo:start -->", "<!-- zoo:end -->"
EXACT_START, EXACT_END = "<!-- zoo-exactness:start -->", "<!-- zoo-exactness:end -->"  # in docs/deploy.md


# overrides every long run sets (where the data lie, threads, compilation) or that the table shows (epochs)
ROUTINE_OVERRIDES = {"data.root", "train.threads", "train.compile", "kd.compile", "train.epochs"}


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def table() -> str:
    rows = []
    for p in sorted((ROOT / "results" / "runs").glob("*.json")):
        r = json.loads(p.read_text())
        m = r["metrics"]
        cpu = r.get("machine", {}).get("cpu", "?")
        gpu = r.get("machine", {}).get("cuda")
        model = r["model"]
        pre = (r.get("model_kwargs") or {}).get("pre_bn_act", "identity")
        if pre != "identity":  # conv -> act -> BN branches (the ReSTE authors' ResNet-20)
            model += f" (conv-{pre}-BN)"
        rows.append(f"| {r['recipe']} | {other_overrides(r.get('overrides'))} | {model} | {r['epochs']} | {fmt(m.get('best_val_top1'))} | "
                    f"{fmt(m.get('final_val_top1'))} | {r['n_val']} | {r['wall_time_s'] / 3600:.1f} h | "
                    f"{gpu or cpu} | {r['commit']} | `results/runs/{p.name}` |")
    if not rows:
        return "No finished runs recorded yet."
    head = ("| recipe | other overrides | model | epochs | best val top-1 (%) | final val top-1 (%) | val images | wall time | "
            "machine | commit | file |\n|---|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def other_overrides(overrides) -> str:
    """The recipe keys a run changed beyond the routine ones, or "-" (None: not recorded)."""
    if overrides is None:
        return "not recorded"
    keys = [o.split("=", 1)[0] for o in overrides]
    return ", ".join(f"`{k}`" for k in keys if k not in ROUTINE_OVERRIDES) or "-"


def zoo_table() -> str:
    """The zoo's entries, from their own JSON files (src/onebit/zoo/NAME.json, written by zoo-add)."""
    rows = []
    for p in sorted((ROOT / "src" / "onebit" / "zoo").glob("*.json")):
        z = json.loads(p.read_text())
        m = z.get("metrics") or {}
        model = z["model"]
        pre = (z.get("model_kwargs") or {}).get("pre_bn_act", "identity")
        if pre != "identity":
            model += f" (conv-{pre}-BN)"
        rows.append(f"| `{p.stem}` | {model} | {z.get('recipe')} | {other_overrides(z.get('overrides'))} | "
                    f"{z.get('epochs', '-')} | {fmt(m.get('best_val_top1'))} | {fmt(m.get('final_val_top1'))} | "
                    f"{z.get('commit')} |")
    head = ("| entry | model | recipe | other overrides | epochs | best val top-1 (%) | final val top-1 (%) | commit |\n"
            "|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def zoo_exactness_table() -> str:
    """Each zoo entry's packed twin against it (results/pack_exactness.json, the newest check of the
    entry's present weights, matched by their SHA-256)."""
    import hashlib
    checks = result("pack_exactness.json") or []
    rows = []
    for p in sorted((ROOT / "src" / "onebit" / "zoo").glob("*.safetensors")):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        found = [(e, r) for e in checks for r in e["results"] if r.get("weights_sha256") == digest]
        if not found:
            rows.append(f"| {p.stem} | no check of these weights on record: `python benchmarks/pack_exactness.py "
                        f"zoo:{p.stem} --data CIFAR_ROOT --split val` | | | | | |")
            continue
        e, r = found[-1]
        u, f, q = r["unfolded"], r["fold_bn"], r["int8_first_last"]
        rows.append(f"| {p.stem} | {r['top1_pytorch']:.2f}% | {u['top1']:.2f}%, {'bit-identical' if u['bit_identical'] else 'not bit-identical'}"
                    f" ({u['prediction_mismatches']} of {u['images']} predictions differ) | {f['top1']:.2f}% "
                    f"({f['prediction_mismatches']} differ) | {q['top1']:.2f}% ({q['top1'] - r['top1_pytorch']:+.2f}) | "
                    f"{q['prediction_mismatches']} | {e['commit']} |")
    head = ("| zoo model | top-1 PyTorch | packed | packed, BN folded | packed, int8 first/last | "
            "predictions changed by int8 | checked at commit |\n|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def result(name: str):
    """results/NAME as a dict, or None before the experiment has written it."""
    p = ROOT / "results" / name
    return json.loads(p.read_text()) if p.is_file() else None


def provenance(r: dict) -> str:
    return f"command `{r['command']}`; commit {r['commit']}; {r['machine'].get('cpu', '?')}"


def table3() -> str:
    r = result("binaryvit_table3.json")
    if r is None:
        return "Not run yet."
    b = r["budget"]
    rows = [f"| {row} | `{v['recipe']}` | {fmt(v['mean'])} | {fmt(v['spread'])} | {len(v['seeds'])} | "
            f"{sum(v['hours']):.2f} h |" for row, v in r["results"].items()]
    subset = f"{b['train_per_class']} training images per class" if b.get("train_per_class") else "all training images"
    return (f"Budget: {b['epochs']} epochs on {subset}; {provenance(r)}.  Ordering holds: {r['ordering_holds']}; full model >= 80%: "
            f"{r['full_model_reaches_80']}.\n\n"
            "| row | recipe | best val top-1 (%) | spread (+-) | seeds | wall time |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows))


def ablation() -> str:
    """ReSTE appendix ablation: mean +- spread per estimator, and the two directions the paper reports."""
    r = result("reste_ablation.json")
    if r is None:
        return "Not run yet."
    res = r["results"]
    rows = [f"| {cfg} | `{json.dumps(v['estimator'])}` | {fmt(v['mean'])} | {fmt(v['spread'])} | "
            f"{', '.join(fmt(a) for a in v['best_val_top1'])} |" for cfg, v in res.items()]
    checks = []
    if "reste_cos3" in res and "ste" in res:
        checks.append(f"ReSTE (o_end = 3, cos) >= clipped STE: {res['reste_cos3']['mean'] >= res['ste']['mean']}")
    if "reste_cos3" in res and "reste_fixed3" in res:
        checks.append(f"progressive o >= fixed o = 3: {res['reste_cos3']['mean'] >= res['reste_fixed3']['mean']}")
    return (f"Budget: {r['epochs']} epochs per run; {provenance(r)}.  " + "; ".join(checks) + " (means over the seeds).\n\n"
            "| config | estimator | mean best val top-1 (%) | spread (+-) | per seed |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def replace_block(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"no {start} ... {end} block in the file")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    readme = (ROOT / "README.md").read_text()
    new = replace_block(readme, START, END, table())
    new = replace_block(new, TABLE3_START, TABLE3_END, table3())
    new = replace_block(new, ABLATION_START, ABLATION_END, ablation())
    new = replace_block(new, ZOO_START, ZOO_END, zoo_table())
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    new_deploy = replace_block(deploy, EXACT_START, EXACT_END, zoo_exactness_table())
    if args.check:
        return 0 if (new, new_deploy) == (readme, deploy) else 1
    (ROOT / "README.md").write_text(new)
    (ROOT / "docs" / "deploy.md").write_text(new_deploy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
