"""`minimind doctor`: one screen about the machine, always finishing (its speed probes are time-bounded)."""

import json
import os
import subprocess
import sys

from minimind.doctor import extras, format_report


def _doctor(*args, env=None):
    # 30 s is a bound on the subprocess (the probes take ~2 s), never a speed assertion
    return subprocess.run([sys.executable, "-m", "minimind.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_doctor_prints_one_screen_within_30_seconds():
    r = _doctor()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) <= 25  # one screen to paste into a bug report
    text = r.stdout
    for key in ("Python", "torch", "cpu flags", "device", "matmul", "gemv", "dtypes", "compile", "memory", "extra"):
        assert key in text, key
    gflops = [float(x.replace(",", "")) for x in
              __import__("re").findall(r"(?:fp32|bf16) ([\d,.]+) GFLOP/s", text)]
    assert len(gflops) == 2 and all(g > 0 for g in gflops)  # both dtypes measured


def test_doctor_reports_slow_bf16_as_fp32_training():
    r = _doctor("--json", env={"MINIMIND_NO_FAST_BF16": "1"})
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    if rep["device"] == "cpu":
        assert rep["train_dtype"] == "float32" and rep["inference_dtype"] == "float32"
        assert "stay in fp32" in format_report(rep)
        assert rep["env"] == {"MINIMIND_NO_FAST_BF16": "1"} or "MINIMIND_NO_FAST_BF16" in rep["env"]
    assert set(rep["speed"]) == {"matmul_fp32_gflops", "matmul_bf16_gflops", "gemv_fp32_gbps", "gemv_bf16_gbps"}
    assert rep["storage"]["disk_free_gb"] > 0


def test_doctor_without_probes_and_extras_from_metadata():
    r = _doctor("--no-speed")
    assert r.returncode == 0 and "matmul" not in r.stdout and "dtypes" in r.stdout
    ex = extras()
    assert "test" not in ex  # test tools are not user-facing extras
    assert {"serve", "export"} <= set(ex)
    assert all(isinstance(pkgs, dict) and pkgs for pkgs in ex.values())
