"""The C++ XNOR-popcount engine (onebit._engine through onebit.deploy.engine).

Every integer result is compared bit-exactly with a NumPy reference that multiplies signs as
+-1 int32 (zero padding contributes 0), on every kernel path this CPU supports, with 1 and 2
threads, for odd channel counts, K not a multiple of 64, strides, paddings, dilation, groups and
batches.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

import numpy as np
import pytest
import torch

from onebit.deploy import engine

PATHS = engine.available_paths()
THREADS = (1, 2)


def signs(a: np.ndarray) -> np.ndarray:
    """+1 where a >= 0 (-0.0 included), -1 elsewhere, as int32."""
    return np.where(a >= 0, 1, -1).astype(np.int32)


def ref_conv(x, w, shift, stride, padding, dilation, groups):
    """Integer accumulators of a binary convolution: signs of x + shift and of w as +-1, padding 0."""
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    xs = signs(x + (0 if shift is None else shift[None, :, None, None]))
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.int32)
    xp[:, :, ph:ph + h, pw:pw + wd] = xs
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, f, oh, ow), np.int32)
    fg = f // groups
    ws = signs(w)
    for g in range(groups):
        cols = []
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                cols.append(patch)  # (n, cg, oh, ow)
        col = np.stack(cols, axis=2).reshape(n, cg * kh * kw, oh * ow)  # channel-major, tap-minor
        wm = ws[g * fg:(g + 1) * fg].reshape(fg, cg * kh * kw)
        out[:, g * fg:(g + 1) * fg] = np.einsum("fk,nkp->nfp", wm, col).reshape(n, fg, oh, ow)
    return out


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    bits = np.unpackbits(words.view(np.uint8).reshape(*words.shape, 8), axis=-1, bitorder="little")
    return bits.reshape(*words.shape[:-1], -1)


# --- features and settings ---------------------------------------------------------------------

def test_features_and_paths():
    f = engine.cpu_features()
    assert set(f) >= {"popcnt", "avx2", "avx512_vpopcntdq", "x86_64"}
    assert all(isinstance(v, bool) for v in f.values())
    assert PATHS[-1] == "portable"
    assert ("avx2" in PATHS) == f["avx2"] and ("avx512" in PATHS) == f["avx512_vpopcntdq"]
    assert engine.best_path() == PATHS[0]
    assert engine.weight_layout("portable") == "plain"


def test_unavailable_or_unknown_path_raises(monkeypatch):
    with pytest.raises(ValueError, match="unknown engine path"):
        engine.pack_rows(np.zeros((1, 3), np.float32), path="sse9")
    monkeypatch.setattr(engine, "_AVAILABLE", ("portable",))  # a CPU without AVX2, whatever this one has
    for p in ("avx2", "avx512"):
        with pytest.raises(ValueError, match=f"^engine path '{p}' is not supported by this CPU; available: portable$"):
            engine.pack_rows(np.zeros((1, 3), np.float32), path=p)


def test_engine_path_from_the_environment(monkeypatch):
    """ONEBIT_ENGINE_PATH sets the default path; unknown or missing on this CPU: one-line error when a
    call needs the path, not at import, so that set_path (--engine-path) can override a bad value."""
    import os
    import subprocess
    code = "import onebit.deploy as d; print(d.get_path()); d.set_path('portable'); print(d.engine.path_in_use())"
    env = {**os.environ, "ONEBIT_ENGINE_PATH": "portable", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["portable", "portable"], done.stderr
    code = "import onebit.deploy as d; d.set_path('portable'); print(d.engine.path_in_use()); d.set_path('auto')"
    done = subprocess.run([sys.executable, "-c", code], env={**env, "ONEBIT_ENGINE_PATH": "sse9"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["portable"], done.stderr
    for value, want in (("", "auto"), (" portable ", "portable")):
        monkeypatch.setenv("ONEBIT_ENGINE_PATH", value)
        assert engine._env_path() == want
    monkeypatch.setenv("ONEBIT_ENGINE_PATH", "sse9")
    with pytest.raises(ValueError, match="^ONEBIT_ENGINE_PATH: unknown engine path 'sse9'"):
        engine._env_path()
    monkeypatch.setattr(engine, "_AVAILABLE", ("portable",))  # a CPU without AVX2
    monkeypatch.setenv("ONEBIT_ENGINE_PATH", "avx2")
    with pytest.raises(ValueError, match="^ONEBIT_ENGINE_PATH: engine path 'avx2' is not supported by this CPU; "
                                         "available: portable$"):
        engine._env_path()


def test_bench_records_the_path_in_use(tmp_path, capsys, monkeypatch):
    """bench_layer records the path the packed layer ran on (not best_path()); `onebit bench
    --engine-path` chooses it, and refuses a path the CPU lacks with one line."""
    from onebit.cli import main
    from onebit.deploy.bench import bench_layer
    try:
        for path in reversed(PATHS):  # portable first
            engine.set_path(path)
            res = bench_layer("conv", "16,16,6,6", batches=(1,), thread_counts=(1,), repeats=1, warmup=0)
            assert res["engine_path"] == path and engine.path_in_use() == path
        engine.set_path("auto")
        assert engine.path_in_use() == engine.best_path()
        out = tmp_path / "b.json"
        assert main(["bench", "--layer", "conv", "--shape", "16,16,6,6", "--quick", "--engine-path", "portable",
                     "--out", str(out)]) == 0
        import json
        assert json.loads(out.read_text())["engine_path"] == "portable"
        assert "engine path portable" in capsys.readouterr().out
        monkeypatch.setattr(engine, "_AVAILABLE", ("avx2", "portable"))  # a CPU without AVX-512
        assert main(["bench", "--layer", "conv", "--shape", "16,16,6,6", "--quick", "--engine-path", "avx512",
                     "--out", str(out), "--force"]) == 2
        assert capsys.readouterr().err == ("onebit: error: engine path 'avx512' is not supported by this CPU; "
                                           "available: avx2, portable\n")
        assert main(["eval", "x.onebit", "--data", "sample", "--engine-path", "avx512"]) == 2
        assert "not supported by this CPU" in capsys.readouterr().err
        assert main(["pack", "bireal_resnet20", "--out", str(tmp_path / "p.onebit"), "--engine-path", "avx512"]) == 2
        assert "not supported by this CPU" in capsys.readouterr().err
    finally:
        engine.set_path("auto")


def test_num_threads_setting():
    try:
        engine.set_num_threads(None)
        assert engine.get_num_threads() == max(1, torch.get_num_threads())
        engine.set_num_threads(3)
        assert engine.get_num_threads() == 3
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                engine.set_num_threads(bad)
    finally:
        engine.set_num_threads(None)


# --- pack_rows -----------------------------------------------------------------------------------

def test_pack_rows_bit_semantics():
    a = np.array([[0.0, -0.0, 1e-30, -1e-30, 2.0, -2.0, np.inf, -np.inf]], np.float32)
    for path in PATHS:
        words = engine.pack_rows(a, path=path)
        assert words.shape == (1, 1) and words.dtype == np.uint64
        # bits: 0.0 -> 1, -0.0 -> 1, tiny positive -> 1, tiny negative -> 0, ...
        assert int(words[0, 0]) == 0b01010111


def test_pack_rows_threshold_shift():
    # bit = (x + b >= 0): x == -b exactly gives +0.0 -> 1; -0.0 + -0.0 = -0.0 -> 1
    x = np.array([[-0.5, -0.5, 0.25, -0.0, 1.0, -1.0]], np.float32)
    b = np.array([0.5, 0.4999, -0.25, -0.0, -1.5, 1.0], np.float32)
    for path in PATHS:
        bits = unpack_bits(engine.pack_rows(x, b, path=path), 6)[0, :6]
        assert bits.tolist() == [1, 0, 1, 1, 0, 1]


@pytest.mark.parametrize("k", [1, 7, 8, 63, 64, 65, 130, 200])
def test_pack_rows_random_and_zero_tail(k):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((5, k)).astype(np.float32)
    a[0, : k // 2] = 0.0
    a[1, : k // 2] = -0.0
    shift = rng.standard_normal(k).astype(np.float32)
    for path in PATHS:
        for sh in (None, shift):
            words = engine.pack_rows(a, sh, path=path, num_threads=2)
            assert words.shape == (5, (k + 63) // 64)
            bits = unpack_bits(words, k)
            expect = (a + (0 if sh is None else sh)) >= 0
            assert (bits[:, :k] == expect).all()
            assert not bits[:, k:].any()  # unused tail bits are 0


# --- bgemm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 63), (13, 9, 65), (33, 17, 130), (8, 40, 200),
                                   (3, 5, 2304), (64, 64, 576), (19, 6, 4700)])
def test_bgemm_matches_reference(m, n, k):
    rng = np.random.default_rng(m * 1000 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    A, B = engine.pack_rows(a), engine.pack_rows(b)
    ref = signs(a) @ signs(b).T
    for path in PATHS:
        for kernel in ("rows", "panels", "auto"):
            for t in THREADS:
                out = engine.bgemm(A, B, k, path=path, num_threads=t, kernel=kernel)
                assert out.dtype == np.int32 and out.shape == (m, n)
                np.testing.assert_array_equal(out, ref, err_msg=f"path={path} kernel={kernel} threads={t}")


def test_bgemm_rejects_bad_shapes():
    A = np.zeros((2, 2), np.uint64)
    with pytest.raises(ValueError, match="same number of words per row"):
        engine.bgemm(A, np.zeros((2, 3), np.uint64), 64)
    with pytest.raises(ValueError, match=r"K must be in \[0, 64 \* words\]"):
        engine.bgemm(A, A, 129)


# --- linear ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,k,n", [(1, 3, 5), (2, 65, 7), (9, 130, 33), (37, 100, 10)])
def test_linear_accumulators(m, k, n):
    rng = np.random.default_rng(k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    shift = rng.standard_normal(k).astype(np.float32) * 0.5
    W = engine.pack_rows(w)
    ref = signs(x + shift) @ signs(w).T
    scale = rng.uniform(0.1, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for path in PATHS:
        ws = engine.split_weights(W, W.shape[1]) if engine.weight_layout(path) == "split" else None
        for kernel in ("rows", "panels"):
            for t in THREADS:
                acc = engine.linear(x, W, k, shift=shift, accumulate=True, kernel=kernel, path=path, num_threads=t,
                                    wsplit=ws)
                np.testing.assert_array_equal(acc, ref)
                y = engine.linear(x, W, k, shift=shift, scale=scale, bias=bias, kernel=kernel, path=path,
                                  num_threads=t)
                np.testing.assert_allclose(y, ref * scale + bias, rtol=1e-6, atol=1e-5)


# --- convolution ---------------------------------------------------------------------------------

CONV_CASES = [
    # n, c, h, w, f, k, stride, padding, dilation, groups
    (1, 3, 5, 6, 4, 3, 1, 1, 1, 1),
    (3, 63, 7, 7, 5, 3, 2, 1, 1, 1),
    (1, 65, 9, 8, 6, 3, 1, 2, 1, 1),
    (3, 130, 6, 5, 8, 3, 2, 1, 1, 2),
    (1, 64, 12, 11, 16, 3, 1, 1, 1, 1),
    (2, 4, 10, 9, 4, 5, 1, 2, 2, 2),
    (1, 8, 7, 7, 6, 1, 2, 0, 1, 1),
    (1, 200, 4, 4, 9, 3, 1, 1, 1, 1),
    (1, 6, 3, 3, 3, 3, 1, 2, 1, 3),   # padding wider than half the kernel: whole rows outside
    # one word per pixel, stride 1, output rows of whole 8-pixel panels: the AVX-512 path's direct
    # convolution (no im2col), with dilation, no padding, padding wider than half the kernel, 5x5, 1x1
    (2, 16, 8, 8, 16, 3, 1, 1, 1, 1),
    (1, 33, 12, 16, 9, 3, 1, 2, 2, 1),
    (1, 64, 10, 10, 5, 3, 1, 0, 1, 1),
    (1, 7, 4, 6, 3, 3, 1, 2, 1, 1),
    (1, 20, 16, 16, 10, 5, 1, 2, 1, 1),
    (1, 64, 8, 8, 12, 1, 1, 0, 1, 1),
    # rows of 5+ panels: the single-filter tap kernel (7 panels, then the rest of a row of 8)
    (1, 24, 6, 64, 5, 3, 1, 1, 1, 1),
    (2, 50, 7, 48, 3, 3, 1, 2, 2, 1),
    # the AVX2 path's direct convolution (rows of whole 4-pixel panels, nibble-split copies): rows of 12
    # (not whole 8-pixel panels: im2col on AVX-512), with dilation and batches; 7x7 taps (49 words per
    # pixel: byte counts flushed past 31 steps), also direct on AVX-512
    (2, 40, 9, 12, 7, 3, 1, 1, 1, 1),
    (3, 64, 10, 12, 6, 3, 1, 2, 2, 1),
    (2, 5, 9, 12, 4, 7, 1, 3, 1, 1),
    (2, 5, 9, 8, 4, 7, 1, 3, 1, 1),
    # large images: the im2col rows are built tile by tile instead of once per image (direct on AVX-512)
    (1, 64, 56, 56, 8, 3, 1, 1, 1, 1),
    (2, 130, 30, 29, 4, 3, 1, 1, 1, 1),
    (1, 66, 45, 44, 6, 3, 2, 2, 1, 2),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "n{}c{}_{}x{}_f{}_k{}s{}p{}d{}g{}".format(*c))
def test_conv_accumulators_match_reference(case):
    n, c, h, w, f, k, s, p, d, g = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, 0, 0, :] = 0.0  # exact zeros binarize to +1
    x[-1, -1, -1, :] = -0.0
    wt = rng.standard_normal((f, c // g, k, k)).astype(np.float32)
    shift = (rng.standard_normal(c) * 0.3).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    kw = k * k * ((c // g + 63) // 64)
    assert (tapsum == signs(wt).sum(axis=1).reshape(f, k * k)).all()
    for sh in (None, shift):
        ref = ref_conv(x, wt, sh, (s, s), (p, p), (d, d), g)
        xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last strides
        for path in PATHS:
            ws = engine.split_weights(bits, kw) if engine.weight_layout(path) == "split" else None
            for t in THREADS:
                for xin, wsp in ((x, None), (xl, ws)):
                    out = engine.conv2d(xin, bits, tapsum, groups=g, kernel_size=k, stride=s, padding=p, dilation=d,
                                        shift=sh, accumulate=True, path=path, num_threads=t, wsplit=wsp)
                    assert out.dtype == np.int32
                    np.testing.assert_array_equal(out, ref, err_msg=f"path={path} threads={t}")


def test_conv_epilogue_scale_bias():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 70, 6, 6)).astype(np.float32)
    wt = rng.standard_normal((12, 70, 3, 3)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    scale = rng.uniform(0.1, 1.0, 12).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    ref = ref_conv(x, wt, None, (1, 1), (1, 1), (1, 1), 1)
    for path in PATHS:
        y = engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, scale=scale, bias=bias, path=path)
        np.testing.assert_allclose(y, ref * scale[None, :, None, None] + bias[None, :, None, None],
                                   rtol=1e-6, atol=1e-5)


def epilogue_case(case, seed: int, bias_std: float):
    """(rng, x, packed weights, tapsum, per-filter scale and bias) for a conv case tuple."""
    n, c, h, w, f, k, s, p, d, g = case
    rng = np.random.default_rng(sum(case) + seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(rng.standard_normal((f, c // g, k, k)).astype(np.float32))
    scale = rng.uniform(0.01, 1.0, f).astype(np.float32)
    bias = (rng.standard_normal(f) * bias_std).astype(np.float32)
    return rng, x, bits, tapsum, scale, bias


@pytest.mark.parametrize("case", [(1, 64, 12, 11, 16, 3, 1, 1, 1, 1), (3, 63, 7, 7, 5, 3, 2, 1, 1, 1),
                                  (3, 130, 6, 5, 8, 3, 2, 1, 1, 2), (1, 64, 56, 56, 8, 3, 1, 1, 1, 1),
                                  (1, 512, 7, 7, 24, 3, 1, 1, 1, 1)],
                         ids=lambda c: "n{}c{}_{}x{}_f{}_k{}s{}p{}d{}g{}".format(*c))
def test_conv_fused_residual_is_the_separate_add(case):
    """y = conv(x) + residual fused into the epilogue: bit for bit the float32 add of the two."""
    n, c, h, w, f, k, s, p, d, g = case
    rng, x, bits, tapsum, scale, bias = epilogue_case(case, seed=1, bias_std=1.0)
    kw = dict(groups=g, kernel_size=k, stride=s, padding=p, dilation=d, scale=scale, bias=bias)
    for path in PATHS:
        for t in THREADS:
            y = engine.conv2d(x, bits, tapsum, path=path, num_threads=t, **kw)
            r = (rng.standard_normal(y.shape) * 3).astype(np.float32)
            want = (torch.from_numpy(y) + torch.from_numpy(r)).numpy()
            got = engine.conv2d(x, bits, tapsum, residual=r, path=path, num_threads=t, **kw)
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            # in place into the residual's own buffer
            r2 = r.copy()
            res = engine.conv2d(x, bits, tapsum, residual=r2, out=r2, path=path, num_threads=t, **kw)
            assert res.ctypes.data == r2.ctypes.data
            np.testing.assert_array_equal(r2.view(np.int32), want.view(np.int32))


def test_bound_conv_matches_conv2d_and_checks_its_shape():
    """BoundConv2d (what PackedBinaryConv2d calls) gives conv2d's results, float input or packed
    input, and refuses an input of another shape or of the other kind with a clear error."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 40, 9, 16)).astype(np.float32)
    wt = rng.standard_normal((6, 40, 3, 3)).astype(np.float32)
    shift = (rng.standard_normal(40) * 0.3).astype(np.float32)
    scale = rng.uniform(0.1, 1.0, 6).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    geo = (1, (3, 3), (1, 1), (1, 1), (1, 1), (9, 16))
    for path in PATHS:
        ws = engine.split_weights(bits, 9) if engine.weight_layout(path) == "split" else None
        want = engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, shift=shift, scale=scale, bias=bias, path=path)
        conv = engine._C.BoundConv2d(x.shape, False, bits, tapsum, *geo, shift, scale, bias, path, ws)
        for t in THREADS:
            np.testing.assert_array_equal(conv(x, num_threads=t), want)
        acc = conv(x, accumulate=True)
        np.testing.assert_array_equal(acc, ref_conv(x, wt, shift, (1, 1), (1, 1), (1, 1), 1))
        xb = engine.pack_nchw(x, shift, path=path)
        packed = engine._C.BoundConv2d(x.shape, True, bits, tapsum, *geo, None, scale, bias, path, ws)
        np.testing.assert_array_equal(packed(None, xb), want)
        with pytest.raises(ValueError, match="another shape"):
            conv(x[:, :, :8])
        with pytest.raises(ValueError, match="reads a float32 input"):
            conv(None, xb)
        with pytest.raises(ValueError, match="reads packed x_bits"):
            packed(x)
        with pytest.raises(ValueError, match="shift is applied when packing"):
            engine._C.BoundConv2d(x.shape, True, bits, tapsum, *geo, shift, scale, bias, path, ws)


def test_conv_batchnorm_epilogue_matches_float_reference():
    """bn_terms derives alpha and beta in torch's float steps; the epilogue then computes
    (acc * scale + bias) * alpha + beta rounded twice, or once (a fused multiply-add), then the
    residual, as the float32 reference (the fused form emulated in float64: exact product, one
    rounding of the sum, then to float32)."""
    rng = np.random.default_rng(12)
    c, f = 37, 11
    x = rng.standard_normal((2, c, 7, 9)).astype(np.float32)
    wt = rng.standard_normal((f, c, 3, 3)).astype(np.float32)
    scale = rng.uniform(0.1, 1.0, f).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    w, b = rng.standard_normal(f).astype(np.float32), rng.standard_normal(f).astype(np.float32)
    mean = (rng.standard_normal(f) * 3).astype(np.float32)
    var = rng.uniform(0.01, 4.0, f).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    t = engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, scale=scale, bias=bias)
    r = rng.standard_normal(t.shape).astype(np.float32)
    alpha = ((np.float32(1) / np.sqrt(var + np.float32(1e-5))) * w).astype(np.float32)
    col = (None, slice(None), None, None)
    for fma in (False, True):
        terms = engine._C.bn_terms(w, b, mean, var, 1e-5, fma)
        np.testing.assert_array_equal(terms[0], alpha)
        if fma:
            beta = (b.astype(np.float64) - mean.astype(np.float64) * alpha).astype(np.float32)
            y = (t.astype(np.float64) * alpha[col] + beta[col]).astype(np.float32)
        else:
            beta = (b - mean * alpha).astype(np.float32)
            y = (t * alpha[col]).astype(np.float32) + beta[col]
        np.testing.assert_array_equal(terms[1], beta)
        for path in PATHS:
            conv = engine._C.BoundConv2d(x.shape, False, bits, tapsum, 1, (3, 3), (1, 1), (1, 1), (1, 1), (7, 9),
                                         None, scale, bias, path)
            np.testing.assert_array_equal(conv(x, bn=terms, bn_fma=fma), y)
            np.testing.assert_array_equal(conv(x, bn=terms, bn_fma=fma, residual=r), y + r)
    with pytest.raises(ValueError, match="bn must be float32"):
        conv(x, bn=terms[:, :3])


def test_conv_residual_and_out_are_checked():
    x = np.zeros((1, 4, 5, 5), np.float32)
    bits, tapsum = engine.pack_conv_weight(np.ones((2, 4, 3, 3), np.float32))
    good = np.zeros((1, 2, 5, 5), np.float32)
    for bad in (np.zeros((1, 2, 5, 4), np.float32), np.zeros((1, 2, 5, 5), np.float64),
                np.zeros((1, 2, 5, 10), np.float32)[..., ::2]):
        with pytest.raises(ValueError):
            engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, residual=bad)
        with pytest.raises(ValueError):
            engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, out=bad)
    with pytest.raises(ValueError):
        engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, residual=good, accumulate=True)
    with pytest.raises(ValueError):  # out may not overlap the input
        engine._C.conv2d(x, bits, tapsum, 1, (3, 3), (1, 1), (1, 1), (1, 1), (5, 5), None, None, None, False,
                         "auto", 1, None, None, x[:, :2])


@pytest.mark.parametrize("case", [(1, 64, 12, 11, 16, 3, 1, 1, 1, 1), (3, 63, 7, 7, 70, 3, 2, 1, 1, 1),
                                  (2, 130, 6, 5, 130, 3, 1, 1, 1, 2), (1, 64, 56, 56, 64, 3, 1, 1, 1, 1),
                                  (1, 40, 9, 9, 200, 3, 1, 1, 1, 1), (2, 12, 8, 7, 6, 3, 1, 1, 1, 3),
                                  (1, 256, 14, 14, 256, 3, 1, 1, 1, 2)],
                         ids=lambda c: "n{}c{}_{}x{}_f{}_k{}s{}p{}d{}g{}".format(*c))
def test_conv_emits_the_bits_pack_nchw_would_give(case):
    """emit='bits' / 'both': the signs of the float result (+ the next layer's shift), packed channels-last,
    equal to pack_nchw of that result, for whole and partial words, groups, residual and RPReLU."""
    n, c, h, w, f, k, s, p, d, g = case
    rng, x, bits, tapsum, scale, bias = epilogue_case(case, seed=7, bias_std=3.0)
    next_shift = (rng.standard_normal(f) * 2).astype(np.float32)
    act = np.stack([rng.standard_normal(f), rng.uniform(0.1, 1, f), rng.standard_normal(f)]).astype(np.float32)
    kw = dict(groups=g, kernel_size=k, stride=s, padding=p, dilation=d, scale=scale, bias=bias)
    for path in PATHS:
        for t in THREADS:
            y = engine.conv2d(x, bits, tapsum, path=path, num_threads=t, **kw)
            r = rng.standard_normal(y.shape).astype(np.float32)
            for extra in ({}, {"residual": r}, {"residual": r, "rprelu": act}):
                want_y = engine.conv2d(x, bits, tapsum, path=path, num_threads=t, **kw, **extra)
                for sh in (None, next_shift):
                    want = engine.pack_nchw(want_y, sh, path=path)
                    got = engine.conv2d(x, bits, tapsum, path=path, num_threads=t, emit="bits", out_shift=sh,
                                        **kw, **extra)
                    assert isinstance(got, engine.PackedActivations) and got.shape == want_y.shape
                    np.testing.assert_array_equal(got.words, want, err_msg=f"path={path} threads={t}")
                    y2, b2 = engine.conv2d(x, bits, tapsum, path=path, num_threads=t, emit="both", out_shift=sh,
                                           **kw, **extra)
                    np.testing.assert_array_equal(y2.view(np.int32), want_y.view(np.int32))
                    np.testing.assert_array_equal(b2.words, want)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_takes_packed_activations(groups):
    """A layer fed PackedActivations (the previous layer's bits) gives what it gives on the floats."""
    rng = np.random.default_rng(11 + groups)
    x = rng.standard_normal((2, 128, 9, 10)).astype(np.float32)
    shift = rng.standard_normal(128).astype(np.float32) * 0.5
    w1 = rng.standard_normal((128, 128 // groups, 3, 3)).astype(np.float32)
    b1, t1 = engine.pack_conv_weight(w1)
    for path in PATHS:
        for t in THREADS:
            y, xb = engine.conv2d(x, b1, t1, groups=groups, kernel_size=3, padding=1, emit="both", out_shift=shift,
                                  path=path, num_threads=t)
            ref = engine.conv2d(y, b1, t1, groups=groups, kernel_size=3, stride=2, padding=1, shift=shift,
                                accumulate=True, path=path, num_threads=t)
            got = engine.conv2d(xb, b1, t1, groups=groups, kernel_size=3, stride=2, padding=1, accumulate=True,
                                path=path, num_threads=t)
            np.testing.assert_array_equal(got, ref)
            np.testing.assert_array_equal(ref, ref_conv(y, w1, shift, (2, 2), (1, 1), (1, 1), groups))


def test_packed_activations_are_checked():
    x = np.zeros((1, 70, 5, 5), np.float32)
    bits, tapsum = engine.pack_conv_weight(np.ones((70, 70, 3, 3), np.float32))
    xb = engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, emit="bits")
    assert xb.words.shape == (1, 5, 5, 2) and xb.words.dtype == np.uint64
    with pytest.raises(ValueError, match="emit"):
        engine.conv2d(x, bits, tapsum, kernel_size=3, emit="int")
    with pytest.raises(ValueError, match="out_shift"):
        engine.conv2d(x, bits, tapsum, kernel_size=3, out_shift=np.zeros(70, np.float32))
    with pytest.raises(ValueError, match="shift"):
        engine.conv2d(xb, bits, tapsum, kernel_size=3, shift=np.zeros(70, np.float32))
    b2, t2 = engine.pack_conv_weight(np.ones((8, 35, 3, 3), np.float32))
    with pytest.raises(ValueError, match="words per pixel"):  # 2 groups of 35 channels read 2 words, not 1
        engine.conv2d(engine.PackedActivations(xb.words[..., :1], 70), b2, t2, groups=2, kernel_size=3)
    with pytest.raises(ValueError, match="accumulate"):
        engine.conv2d(x, bits, tapsum, kernel_size=3, emit="bits", accumulate=True)


POOL_CASES = [(1, 64, 112, 112, 3, 2, 1), (2, 5, 9, 11, 3, 2, 1), (1, 3, 7, 8, 2, 2, 0), (1, 4, 10, 10, 3, 1, 1),
              (1, 2, 6, 9, (2, 3), (1, 2), (1, 1)), (1, 3, 5, 5, 1, 1, 0), (1, 2, 9, 13, 3, 3, 0)]


@pytest.mark.parametrize("case", POOL_CASES)
def test_pools_are_torch_bit_for_bit(case):
    n, c, h, w, k, s, p = case
    F = torch.nn.functional
    g = torch.Generator().manual_seed(h * w)
    for trial in range(6):
        x = torch.randn(n, c, h, w, generator=g) * 10.0 ** (trial - 3)
        if trial % 3 == 0:
            x[0, 0, 0, 1] = float("nan")
            x[-1, -1, -1, -1] = float("-inf")
        if trial % 2 == 1:
            x[..., ::2, :] = -0.0
        for path in PATHS:
            for t in THREADS:
                got = torch.from_numpy(engine.max_pool2d(x, k, s, p, path=path, num_threads=t))
                want = F.max_pool2d(x, k, s, p)
                assert torch.equal(got.isnan(), want.isnan())
                assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5))
                got = torch.from_numpy(engine.avg_pool2d(x, k, s, path=path, num_threads=t))
                want = F.avg_pool2d(x, k, s)
                assert torch.equal(got.nan_to_num(0.5).view(torch.int32), want.nan_to_num(0.5).view(torch.int32))


def test_conv_asymmetric_padding_via_out_size():
    # padding (top, left) = (0, 1) with an explicit output size: the right column is padding too
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 5, 4, 5)).astype(np.float32)
    wt = rng.standard_normal((3, 5, 2, 2)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    xs = signs(x).astype(np.float64)
    xp = np.zeros((1, 5, 5, 7))  # rows: 4 + 1 bottom; cols: 1 left + 5 + 1 right
    xp[:, :, :4, 1:6] = xs
    ref = torch.nn.functional.conv2d(torch.from_numpy(xp), torch.from_numpy(signs(wt).astype(np.float64))).numpy()
    for path in PATHS:
        out = engine.conv2d(x, bits, tapsum, kernel_size=2, padding=(0, 1), out_size=ref.shape[2:],
                            accumulate=True, path=path)
        np.testing.assert_array_equal(out, ref.astype(np.int32))


def test_conv_rejects_bad_arguments():
    x = np.zeros((1, 4, 5, 5), np.float32)
    bits, tapsum = engine.pack_conv_weight(np.ones((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="groups must divide channels and filters"):
        engine.conv2d(x, bits, tapsum, groups=3, kernel_size=3)
    with pytest.raises(ValueError, match=r"tapsum must be int32 \[F, KH\*KW\]"):
        engine.conv2d(x, bits, tapsum[:, :4], kernel_size=3)
    with pytest.raises(ValueError, match="packed weights have too few words per filter"):
        engine.conv2d(x, bits[:, :0], tapsum, kernel_size=3)
    with pytest.raises(ValueError, match="the output would be empty"):
        engine.conv2d(x[:, :, :1, :1], bits, tapsum, kernel_size=3)


def test_pack_nchw_layouts():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 70, 5, 9)).astype(np.float32)
    shift = rng.standard_normal(70).astype(np.float32)
    expect = engine.pack_rows(np.ascontiguousarray((x.transpose(0, 2, 3, 1)).reshape(-1, 70)), shift)
    views = [x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), x[:, :, :, ::-1][:, :, :, ::-1],
             np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 3))))[:, :, :, :9]]
    for path in PATHS:
        for v in views:
            got = engine.pack_nchw(v, shift, path=path, num_threads=2)
            np.testing.assert_array_equal(got.reshape(-1, 2), expect)


def np_pack_nchw(x, shift, groups):
    """NumPy reference of pack_nchw: bit c % 64 of word c // 64 of each group is 1 iff x + shift >= 0."""
    n, c, h, w = x.shape
    cg = c // groups
    v = x + (shift.reshape(1, c, 1, 1) if shift is not None else 0)
    with np.errstate(invalid="ignore"):
        bits = (v >= 0).transpose(0, 2, 3, 1).reshape(n, h, w, groups, cg)
    wg = (cg + 63) // 64
    out = np.zeros((n, h, w, groups, wg), np.uint64)
    for ch in range(cg):
        out[..., ch // 64] |= bits[..., ch].astype(np.uint64) << np.uint64(ch % 64)
    return out.reshape(n, h, w, groups * wg)


@pytest.mark.parametrize("c,groups", [(1, 1), (32, 1), (33, 1), (63, 1), (64, 1), (65, 1), (130, 2), (192, 3)])
def test_pack_nchw_matches_numpy_on_every_path(c, groups):
    # pixel counts around the 8- and 16-pixel vectors of the AVX2 / AVX-512 packers, their 32- and
    # 64-pixel steps, and pack_nchw's 128-pixel tasks; -0.0 and NaN
    rng = np.random.default_rng(c)
    for hw in [(1, 1), (1, 7), (3, 5), (4, 4), (1, 17), (1, 31), (4, 8), (3, 11), (5, 7), (6, 6), (6, 8), (7, 7),
               (7, 9), (8, 8), (5, 13), (7, 19)]:
        x = rng.standard_normal((2, c, *hw)).astype(np.float32)
        x.flat[::7] = -0.0
        x.flat[3::11] = np.nan
        for shift in (None, rng.standard_normal(c).astype(np.float32)):
            want = np_pack_nchw(x, shift, groups)
            for path in PATHS:
                got = engine.pack_nchw(x, shift, groups, path=path, num_threads=2)
                np.testing.assert_array_equal(got, want, err_msg=f"path {path}, {c} channels, {hw}")


def test_concurrent_calls_from_python_threads():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 64, 12, 12)).astype(np.float32)
    wt = rng.standard_normal((32, 64, 3, 3)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    ref = ref_conv(x, wt, None, (1, 1), (1, 1), (1, 1), 1)

    def run(_):
        return engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1, accumulate=True, num_threads=2)

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for out in ex.map(run, range(16)):
            np.testing.assert_array_equal(out, ref)


def _child_conv(q):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    A = engine.pack_rows(a, num_threads=2)
    q.put(bool((engine.bgemm(A, A, 300, num_threads=2) == signs(a) @ signs(a).T).all()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_thread_pool_survives_fork():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    engine.bgemm(engine.pack_rows(a), engine.pack_rows(a), 300, num_threads=2)  # the parent's pool is up
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_conv, args=(q,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0 and q.get(timeout=5)


# --- where the threads come from -------------------------------------------------------------------

def test_thread_backend_shares_torchs_openmp():
    name = engine.thread_backend()
    if sys.platform == "linux" and "OpenMP" in torch.__config__.parallel_info():
        assert name.startswith("openmp:") and "omp" in name.rsplit("/", 1)[-1], name
    else:
        assert name == "pool" or name.startswith("openmp:")
    with pytest.raises(ValueError, match="thread backend"):
        engine.set_thread_backend("tbb")


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[3], CONV_CASES[9], CONV_CASES[11]],
                         ids=lambda c: "n{}c{}_{}x{}_f{}_k{}s{}p{}d{}g{}".format(*c))
def test_thread_backends_give_the_same_accumulators(case):
    n, c, h, w, f, k, s, p, d, g = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((f, c // g, k, k)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    ref = ref_conv(x, wt, None, (s, s), (p, p), (d, d), g)
    try:
        for backend in ("pool", "auto"):
            engine.set_thread_backend(backend)
            if backend == "pool":
                assert engine.thread_backend() == "pool"
            for t in (2, 3):
                out = engine.conv2d(x, bits, tapsum, groups=g, kernel_size=k, stride=s, padding=p, dilation=d,
                                    accumulate=True, num_threads=t)
                np.testing.assert_array_equal(out, ref, err_msg=f"backend={backend} threads={t}")
    finally:
        engine.set_thread_backend("auto")


def test_engine_inside_a_torch_parallel_region_runs():
    # torch.set_num_threads(2) plus a torch op right before: torch's OpenMP threads are spinning
    # when the engine hands them its tasks
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 64, 20, 20)).astype(np.float32)
    wt = rng.standard_normal((48, 64, 3, 3)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(wt)
    ref = ref_conv(x, wt, None, (1, 1), (1, 1), (1, 1), 1)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(5):
            torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt), padding=1)
            np.testing.assert_array_equal(engine.conv2d(x, bits, tapsum, kernel_size=3, padding=1,
                                                        accumulate=True, num_threads=2), ref)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("hw, k, s, p, d", [((7, 9), (3, 3), (1, 1), (1, 1), (1, 1)), ((8, 5), (3, 2), (2, 3), (0, 1), (2, 1)),
                                            ((4, 4), (5, 5), (1, 1), (0, 0), (1, 1)), ((56, 56), (3, 3), (2, 2), (1, 1), (1, 1))])
def test_conv_out_size_is_torchs(hw, k, s, p, d):
    """The one output-size formula the engine, the packed layers and the pools share, against torch."""
    from onebit.binarize.fused import conv_out_size
    out = conv_out_size(hw, k, s, p, d)
    if min(out) < 1:
        with pytest.raises(RuntimeError):
            torch.nn.functional.conv2d(torch.zeros(1, 1, *hw), torch.zeros(1, 1, *k), None, s, p, d)
        return
    assert out == tuple(torch.nn.functional.conv2d(torch.zeros(1, 1, *hw), torch.zeros(1, 1, *k), None, s, p, d).shape[2:])
    if d == (1, 1) and 2 * max(p) <= min(k):
        assert out == tuple(torch.nn.functional.max_pool2d(torch.zeros(1, 1, *hw), k, s, p).shape[2:])
