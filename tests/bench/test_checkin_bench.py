"""bench/checkin.py end to end in --quick mode: proves the harness works, asserts no timings."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk); the check-in bench needs it"
)


@pytest.mark.slow
def test_quick_run_measures_ours_on_both_databases_and_the_bare_baseline_without_errors(pg_server_url, tmp_path):
    out = tmp_path / "checkin.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "checkin.py"), "--quick", "--out", str(out), "--pg-url", pg_server_url],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["quick"] is True
    assert report["bare"]["wrk"]["errors"] == 0
    assert report["bare"]["wrk"]["requests"] > 0
    for backend in ("sqlite", "postgresql"):
        run = report["backends"][backend]
        wrk = run["wrk"]
        assert wrk["errors"] == 0, wrk
        assert wrk["requests"] > 0
        assert wrk["status"]["304"] > 0.9 * wrk["requests"]  # devices send their ETag: almost all 304
        assert {"p50", "p90", "p99", "max"} <= set(wrk["latency_ms"])
        assert run["ratio_to_bare"] > 0
        for stream in ("checkin", "telemetry", "events"):
            assert run["mix"][stream]["errors"] == 0, run["mix"][stream]
            assert run["mix"][stream]["served_per_s"] > 0
            assert {"p50", "p99"} <= set(run["mix"][stream]["latency_ms"])
    assert "check-ins/s" in result.stdout
    assert "ours/bare" in result.stdout
