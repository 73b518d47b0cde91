"""The C++ engine under AddressSanitizer and UndefinedBehaviorSanitizer (slow: compiles the engine).

Builds csrc/tests/engine_selftest.cpp with the engine sources (all but the Python bindings) using
g++ -fsanitize=address,undefined -O1 -g and runs it: every kernel path this CPU has against scalar
references, and the thread pool.  It must exit 0 without any sanitizer report.  A second build links
libgomp, so that the same checks run parallel_for on an OpenMP team.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def _gxx_and_sources():
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the sanitizer build needs g++ (with libasan and libubsan)")
    return gxx, [str(p) for p in sorted(CSRC.glob("*.cpp")) if p.name != "bindings.cpp"]


@pytest.mark.slow
def test_engine_selftest_under_asan_ubsan(tmp_path):
    gxx, sources = _gxx_and_sources()
    exe = tmp_path / "engine_selftest"
    build = subprocess.run(
        [gxx, "-std=c++17", "-O1", "-g", "-ffp-contract=off",  # as the package build: no implicit FMAs
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-pthread", f"-I{CSRC}", str(CSRC / "tests" / "engine_selftest.cpp"), *sources,
         "-o", str(exe), "-ldl"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert "OK (0 failures)" in run.stdout
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in report, report[-4000:]


@pytest.mark.slow
def test_engine_selftest_on_an_openmp_team(tmp_path):
    """The same self-test linked against libgomp, so that parallel_for runs on the OpenMP team (as in
    a process with torch) rather than the std::thread pool, with a team smaller than requested
    (OMP_THREAD_LIMIT=2 against the test's 3 and 4 threads: the missing threads' parts are drained)."""
    gxx, sources = _gxx_and_sources()
    exe = tmp_path / "engine_selftest_omp"
    build = subprocess.run(
        [gxx, "-std=c++17", "-O2", "-ffp-contract=off", "-pthread", f"-I{CSRC}", str(CSRC / "tests" / "engine_selftest.cpp"),
         *sources, "-o", str(exe), "-ldl", "-Wl,--no-as-needed", "-lgomp"], capture_output=True, text=True, timeout=600)
    if build.returncode != 0 and "lgomp" in build.stderr:
        pytest.skip("libgomp not found for linking")
    assert build.returncode == 0, build.stderr[-4000:]
    for limit in ("64", "2"):
        run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, OMP_THREAD_LIMIT=limit, OMP_DYNAMIC="true"))
        assert run.returncode == 0 and "OK (0 failures)" in run.stdout, (run.stdout + run.stderr)[-4000:]
        assert "threads openmp:" in run.stdout, run.stdout[:500]
