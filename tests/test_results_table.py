"""The result tables of README.md and docs/deploy.md are generated from result files, never typed:
they must be current."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_tables_match_their_files():
    """Every generated block (README.md: zoo, runs, Table 3, ReSTE ablation; docs/deploy.md: the zoo's
    packed twins) is what the files give now: a result file or zoo entry changed without
    `python scripts/results_table.py` fails."""
    assert load_script().main(["--check"]) == 0


def test_zoo_table_reads_the_entries_own_files(tmp_path, monkeypatch):
    """One row per zoo entry, its numbers from its JSON; overrides beyond the routine ones named,
    "not recorded" for an entry written before zoo-add kept them."""
    rt = load_script()
    zoo = tmp_path / "src" / "onebit" / "zoo"
    zoo.mkdir(parents=True)
    base = {"model": "bireal_resnet20", "model_kwargs": {"pre_bn_act": "relu"}, "recipe": "reste-resnet20-cifar10",
            "epochs": 300, "commit": "abc1234", "metrics": {"best_val_top1": 84.5, "final_val_top1": 84.01}}
    (zoo / "b_entry.json").write_text(json.dumps({**base, "overrides": ["data.root=/d", "train.threads=2",
                                                                          "kd={teacher: zoo:t}", "kd.compile=true"]}))
    (zoo / "a_entry.json").write_text(json.dumps(base))
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    rows = rt.zoo_table().splitlines()[2:]
    assert rows == [
        "| `a_entry` | bireal_resnet20 (conv-relu-BN) | reste-resnet20-cifar10 | not recorded | 300 | 84.50 | 84.01 | abc1234 |",
        "| `b_entry` | bireal_resnet20 (conv-relu-BN) | reste-resnet20-cifar10 | `kd` | 300 | 84.50 | 84.01 | abc1234 |"]
