"""scripts/sampler_variants.py on the CPU at the tiny config: runs, times, writes its JSON."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sampler_variants.py"
FLAG = "--xla_gpu_enable_dynamic_slice_fusion=true"  # a real XLA flag, inert on the CPU


def _run(tmp_path, *argv):
    out = tmp_path / "variants.json"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "var-test", "--out", str(out), *argv],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return res, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.slow  # an A/B script smoke run
def test_smoke_tiny_cpu(tmp_path):
    res, doc = _run(
        tmp_path,
        "--batches=1",
        "--repeats=1",
        "--variants=baseline,unrolled_kv_full",
        "--profile-batches=",
        f"--xla-flags={FLAG}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert FLAG in doc["meta"]["xla_flags"] and doc["meta"]["model"] == "var-test"
    assert [(r["variant"], r["batch"]) for r in doc["rows"]] == [
        ("baseline", 1),
        ("unrolled_kv_full", 1),
    ]
    for r in doc["rows"]:
        assert "error" not in r and r["latency_ms_median"] > 0 and len(r["latencies_ms"]) == 1
        assert r["tokens_equal_baseline_sampled"] == 1.0  # same labels and key: same tokens
        assert r["hlo"]["instructions"] > 0
    base, unrolled = (r["options"] for r in doc["rows"])
    assert base == {
        "sampling_filter": "sort",
        "sampler_kv": "prefix",
        "scan_unroll": 1,
        "attention": "auto",
    }
    assert unrolled["sampler_kv"] == "full" and doc["rows"][1]["hlo"]["while"] == 0
    assert "baseline" in res.stdout and "unrolled_kv_full" in res.stdout  # the table


def test_rejected_xla_flag_is_reported(tmp_path):
    res, doc = _run(tmp_path, "--xla-flags=--xla_no_such_flag=1")
    assert res.returncode == 2 and "xla_no_such_flag" in doc["error"]
