"""What a benchmark records about the machine it ran on, shared by the scripts in benchmarks/."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

FLAGS = ("popcnt", "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512vpopcntdq")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> list[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    return sorted({f for f in FLAGS if f" {f}" in text})


def write_json(obj: dict, path, argv=None) -> None:
    """Write a benchmark's result with the command line that made it (the calling script and
    ``argv``, default sys.argv[1:]) and the commit, ahead of the script's own keys."""
    import inspect
    from onebit.train.loop import git_commit
    script = Path(inspect.stack()[1].filename).resolve()
    try:
        script = script.relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    args = list(sys.argv[1:] if argv is None else argv)
    obj = {"command": " ".join(["python", script.as_posix(), *args]), "commit": git_commit(), **obj}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def add_omp_passive(ap) -> None:
    """The --omp-passive option of the engine benchmarks (see reexec_omp_passive)."""
    ap.add_argument("--omp-passive", action="store_true",
                    help="re-run under OMP_WAIT_POLICY=PASSIVE: torch's OpenMP workers sleep instead of spinning "
                         "after each op")


def reexec_omp_passive(args) -> None:
    """With --omp-passive, restart this script under OMP_WAIT_POLICY=PASSIVE (it must be set before torch starts)."""
    if args.omp_passive and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
