"""On a CPU without bf16 units (AVX2-only) bf16 matmuls are emulated, ~100x slower than fp32: bench/
reports the slow dtype as slow instead of running it for hours, and Muon orthogonalises in fp32.

MINIMIND_NO_FAST_BF16=1 makes minimind's bf16 probe answer "no bf16 units" on any machine, which
is how these tests reach the AVX2-only code path on a machine that has the units.
"""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_peak_reports_emulated_bf16_as_slow_and_finishes(tmp_path):
    out = tmp_path / "peak.json"
    env = {**os.environ, "MINIMIND_NO_FAST_BF16": "1", "PYTHONPATH": str(ROOT)}
    # the timeout bounds the subprocess (it takes a few seconds); it is not a speed assertion
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "peak.py"), "--out", str(out)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["gflops"]) == {"fp32", "bf16"} and all(v > 0 for v in res["gflops"].values())
    assert res["slow"]["fp32"] is None and "emulated" in res["slow"]["bf16"]
    bf16_row = next(line for line in r.stdout.splitlines() if line.startswith("bf16"))
    assert "emulated" in bf16_row


def test_train_bench_skips_the_emulated_dtype(monkeypatch):
    sys.path.insert(0, str(ROOT))
    from bench.peak import dtype_is_slow
    from bench.train import plan_jobs

    args = Namespace(presets="nano", stages="pretrain,sft", dtypes="fp32,bf16", seq=64, batch=2, steps=1,
                     compile=True)
    monkeypatch.setenv("MINIMIND_NO_FAST_BF16", "1")
    jobs, skipped = plan_jobs(args)
    assert {j["dtype"] for j in jobs} == {"fp32"} and len(jobs) == 2
    assert len(skipped) == 4 and all(j["dtype"] == "bf16" and "emulated" in why for j, why in skipped)
    assert dtype_is_slow("fp16") and dtype_is_slow("fp32") is None
    monkeypatch.delenv("MINIMIND_NO_FAST_BF16")
    from minimind.runtime import cpu_has_fast_bf16

    jobs, skipped = plan_jobs(args)
    assert (len(skipped) == 0) == cpu_has_fast_bf16()  # on a bf16 machine nothing is skipped


def test_muon_orthogonalises_in_fp32_where_bf16_is_emulated(monkeypatch):
    import torch

    from minimind.train import muon

    g = torch.randn(64, 96)
    monkeypatch.setenv("MINIMIND_NO_FAST_BF16", "1")
    assert muon._ns_dtype(g.device) == torch.float32
    o = muon.newton_schulz5(g)
    assert o.dtype == torch.float32 and o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert 0.5 < s.min() and s.max() < 1.5  # NS5 pushes every singular value towards 1
    assert muon._ns_dtype(torch.device("cuda")) == torch.bfloat16  # GPUs keep bf16
