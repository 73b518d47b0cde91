"""Build of the C++ XNOR-popcount engine, ``onebit._engine`` (metadata lives in pyproject.toml).

The extension is compiled for the baseline of the target architecture (no -march=native): the
AVX2 and AVX-512 kernels carry per-function target attributes and are picked at run time from
the CPU's features, so one binary runs on any x86-64 (and the portable path elsewhere).
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Adds compiler-specific flags and pybind11's headers (pybind11 is a build requirement)."""

    def build_extensions(self):
        import pybind11

        msvc = self.compiler.compiler_type == "msvc"
        flags = ["/O2", "/std:c++17", "/EHsc"] if msvc else [
            "-O3", "-std=c++17", "-ffp-contract=off", "-fvisibility=hidden", "-pthread", "-Wall",
            "-Wno-unknown-pragmas"]
        link = [] if msvc else ["-pthread"] + (["-ldl"] if sys.platform.startswith("linux") else [])
        for ext in self.extensions:
            ext.include_dirs.append(pybind11.get_include())
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
            ext.extra_link_args = link + list(ext.extra_link_args or [])
        super().build_extensions()


here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.cpp")))
headers = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.h")))

setup(
    ext_modules=[Extension("onebit._engine", sources=sources, depends=headers, include_dirs=["csrc"],
                           language="c++")],
    cmdclass={"build_ext": BuildExt},
)
