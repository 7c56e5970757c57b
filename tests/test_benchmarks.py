"""The benchmark scripts still run: each one tiny, on the CPU (their figures are not checked, only their shape)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def test_the_throughput_table_has_a_row_per_network_size_and_variant():
    result = run_script("benchmarks/train_throughput.py", "--table", "--networks", "adm-xs,unet", "--sizes", "8,16",
                        "--variants", "fp32,channels_last,bf16", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                        "--base-channels", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [tuple(cell.strip() for cell in row.split("|")[1:4]) for row in rows] == [
        (net, size, variant) for net in ("adm-xs", "unet") for size in ("8", "16")
        for variant in ("fp32", "channels_last", "bf16")]
    measured = [row for row in rows if "no bf16" not in row]
    assert len(measured) >= 8  # fp32 and channels_last always run; bf16 where the CPU has it
    for row in measured:
        gflop, images_per_s, gflops = (float(cell) for cell in row.split("|")[4:7])
        assert gflop > 0 and images_per_s > 0 and gflops > 0
    gflop_of = {tuple(c.strip() for c in row.split("|")[1:3]): float(row.split("|")[4]) for row in measured}
    assert 3.5 < gflop_of[("adm-xs", "16")] / gflop_of[("adm-xs", "8")] < 4.5  # FLOPs grow with the pixel count


def test_the_throughput_table_refuses_an_unknown_variant():
    result = run_script("benchmarks/train_throughput.py", "--table", "--variants", "fp32,fp8")
    assert result.returncode == 2 and "--variants: unknown fp8" in result.stderr


def test_the_step_sync_check_skips_exactly_the_non_finite_step():
    """On the CPU it runs the same steps (one with a NaN batch) and checks the skip count; on a GPU it also fails
    any step that synchronises."""
    result = run_script("benchmarks/step_sync_check.py", "--device", "cpu", "--steps", "4", "--image-size", "8",
                        "--batch-size", "2")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.count("4 steps, the non-finite one skipped") == 2


def test_the_iddm_comparison_refuses_a_folder_that_is_not_an_iddm_checkout(tmp_path):
    result = run_script("benchmarks/vs_iddm.py", "--iddm", str(tmp_path), "--data", str(tmp_path))
    assert result.returncode == 2 and f"--iddm: {tmp_path} holds no iddm/tools/train.py" in result.stderr
