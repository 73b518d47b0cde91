"""Fuzzing the packed file loader: every mutated file either loads the original model or raises
PackedFileError; no other exception, no crash.  The loop runs in a subprocess so that a crash
(a segfault in a reader, say) fails the test instead of killing pytest.  200 cases by default,
10,000 with `pytest -m slow`."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CASES = 10_000
QUICK_CASES = 200  # the default run's share

SCRIPT = textwrap.dedent(r'''
    import json, os, random, sys, tempfile
    import torch
    import onebit
    from onebit import deploy
    from onebit.deploy import PackedFileError
    from onebit.deploy import file as PF

    cases, seed, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    model = onebit.create_model("bireal_resnet20").eval()
    path = deploy.save(model, os.path.join(workdir, "orig.onebit"))
    raw = open(path, "rb").read()
    ref = deploy.load(path)
    ref_state, ref_repr = ref.state_dict(), repr(ref)
    rng = random.Random(seed)
    n = int.from_bytes(raw[:8], "little")

    def rand_bytes(k):
        return bytes(rng.randrange(256) for _ in range(k))

    def pos(b, header_bias=0.6):  # most mutations hit the header, where the parsing is
        if rng.random() < header_bias:
            return rng.randrange(min(len(b), 8 + n))
        return rng.randrange(len(b))

    def flip(b):
        b = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            b[pos(b)] ^= 1 << rng.randrange(8)
        return bytes(b)

    def truncate(b):
        return b[:rng.randrange(len(b))]

    def insert(b):
        i = pos(b)
        return b[:i] + rand_bytes(rng.randint(1, 16)) + b[i:]

    def delete(b):
        i = pos(b)
        return b[:i] + b[i + rng.randint(1, 16):]

    def append(b):
        return b + rand_bytes(rng.randint(1, 64))

    def length(b):
        choices = [n + rng.randint(-16, 16), rng.randrange(2 ** 64), rng.randrange(len(b) + 16), 0]
        return rng.choice(choices).to_bytes(8, "little") + b[8:]

    def field(b):
        """Edit one header field and re-serialise (recomputing the header checksum half of the
        time, so that the structural checks rather than the checksum meet the edit); metadata
        values are only edited without the checksum (a forged metadata edit is a different valid file)."""
        header = json.loads(b[8:8 + n])
        forge = rng.random() < 0.5
        names = [k for k in header if k != "__metadata__"]
        k = rng.choice(names)
        what = rng.choice(["dtype", "shape", "offsets", "rename", "drop", "meta"])
        if what == "dtype":
            header[k]["dtype"] = rng.choice(list(PF.DTYPES) + ["F128", "", "f32"])
        elif what == "shape":
            s = header[k]["shape"]
            if s and rng.random() < 0.7:
                s[rng.randrange(len(s))] += rng.choice([-1, 1, 2, -2, 64])
            else:
                header[k]["shape"] = s + [1] if rng.random() < 0.5 else [rng.randint(-2, 10 ** 6)]
        elif what == "offsets":
            o = header[k]["data_offsets"]
            o[rng.randrange(2)] += rng.choice([-8, -1, 1, 8, 10 ** 9])
        elif what == "rename":
            header[k + rng.choice(["x", "_", ".0"])] = header.pop(k)
        elif what == "drop":
            header.pop(k)
        else:
            forge = False
            meta = header["__metadata__"]
            key = rng.choice(sorted(meta))
            v = meta[key]
            meta[key] = rng.choice([v[:-1], v + "0", v.replace("1", "2"), "", "{}", "null", "[]", "1e999"])
        if forge and "__metadata__" in header:
            header["__metadata__"]["sha256_header"] = PF._header_hash(header)
        text = json.dumps(header).encode()
        text += b" " * rng.choice([0, 0, 3])
        return len(text).to_bytes(8, "little") + text + b[8 + n:]

    mutators = [flip, flip, truncate, insert, delete, append, length, field, field]
    outcome = {"error": 0, "loaded_equal": 0}
    failures = []
    target = os.path.join(workdir, "case.onebit")
    for i in range(cases):
        m = rng.choice(mutators)
        data = m(raw)
        if data and rng.random() < 0.1:  # a second, byte-level mutation on top
            data = rng.choice([flip, truncate, insert, delete, append])(data)
        with open(target, "wb") as f:
            f.write(data)
        try:
            got = deploy.load(target)
        except PackedFileError as e:
            outcome["error"] += 1
            if "\n" in str(e):
                failures.append((i, m.__name__, "multi-line message", str(e)[:200]))
            continue
        except BaseException as e:
            failures.append((i, m.__name__, type(e).__name__, str(e)[:200]))
            continue
        st = got.state_dict()
        same = (repr(got) == ref_repr and st.keys() == ref_state.keys()
                and all(torch.equal(st[k], ref_state[k]) for k in st))
        if same:
            outcome["loaded_equal"] += 1
        else:
            failures.append((i, m.__name__, "loaded a different model", ""))
    print(json.dumps({"cases": cases, **outcome, "failures": failures[:20], "n_failures": len(failures)}))
''')


def fuzz(tmp_path, cases, seed, timeout):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cases), str(seed), str(tmp_path)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"fuzz subprocess died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["cases"] == cases and res["error"] + res["loaded_equal"] == cases, res
    assert res["n_failures"] == 0, res["failures"]
    return res


@pytest.mark.slow
def test_fuzz_packed_file_loader(tmp_path):
    fuzz(tmp_path, CASES, 1234, 3000)


def test_fuzz_packed_file_loader_quick(tmp_path):
    """The same fuzzer with 200 cases (a seed of its own), for the default run."""
    res = fuzz(tmp_path, QUICK_CASES, 4321, 300)
    assert res["error"] > QUICK_CASES // 2  # most mutations are caught, not loaded
