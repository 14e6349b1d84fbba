"""``bench/server_bench.py`` runs end to end (a smoke run: one short round, no speed asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def test_server_bench_prints_every_row_and_both_ratios() -> None:
    result = subprocess.run(
        [sys.executable, "bench/server_bench.py", "--rounds=1", "--seconds=0.5", f"--baseline={REPO}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = dict(re.findall(r"^(grpc echo \(floor\)|grpc predict|rest predict|grpc predict \(baseline\))\s+"
                           r"\d+\s+[\d.]+\s+[\d.]+\s+(\d+)$", result.stdout, re.MULTILINE))
    assert rows == {"grpc echo (floor)": "0", "grpc predict": "0", "rest predict": "0",
                    "grpc predict (baseline)": "0"}, result.stdout  # every row measured, no failed request
    assert re.search(r"^grpc predict = \d+% of the echo floor's requests/s", result.stdout, re.MULTILINE)
    assert re.search(r"^grpc predict = [\d.]+x the baseline's requests/s", result.stdout, re.MULTILINE)


def test_server_bench_load_mode_prints_both_rows_the_ratio_and_memory_against_the_budget() -> None:
    result = subprocess.run(
        [sys.executable, "bench/server_bench.py", "--load", "--rounds=1", "--count=100", "--clients=4",
         f"--budget={512 * 1024**2}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = dict(re.findall(r"^(grpc echo \(floor\)|grpc predict)\s+\d+\s+[\d.]+\s+[\d.]+\s+(\{.*\})$",
                           result.stdout, re.MULTILINE))
    assert rows == {"grpc echo (floor)": "{'OK': 100}", "grpc predict": "{'OK': 100}"}, result.stdout
    assert re.search(r"^grpc predict = \d+% of the echo floor's requests/s", result.stdout, re.MULTILINE)
    assert re.search(r"peak \d+ MiB \(rise -?\d+ MiB\); request memory budget 512 MiB$", result.stdout, re.MULTILINE)
