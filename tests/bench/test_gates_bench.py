"""bench/gates.py end to end with a tiny budget: proves the harness and the JSON fields, asserts no timings."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATES = {"sequential", "fixed_horizon", "naive_peeking", "threshold"}
CELL_FIELDS = {
    "rolled_back",
    "rolled_back_ci95",
    "rolled_back_by_plan",
    "promoted",
    "undecided",
    "median_hours_to_decision",
    "median_hours_to_rollback",
    "blast_device_hours_mean",
    "horizon_hours",
}


def test_a_small_run_reports_every_gate_for_every_regression_and_the_goals(tmp_path):
    out = tmp_path / "gates.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gates.py"), "--runs", "50", "--alphas", "0.05", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gates"
    assert report["settings"]["runs"] == 50
    cells = report["cells"]
    assert {(c["metric"], c["regression_margins"]) for c in cells} == {
        (metric, size) for metric in ("confidence", "error_rate") for size in (0.0, 0.5, 1.0, 2.0)
    }
    for cell in cells:
        assert set(cell["gates"]) == GATES
        for gate in cell["gates"].values():
            assert set(gate) >= CELL_FIELDS
            assert 0.0 <= gate["rolled_back"] <= 1.0
            assert (gate["blast_device_hours_mean"] is None) == (cell["regression_margins"] == 0.0)
    for summary in report["summary"]:
        assert summary["alpha"] == 0.05
        assert set(summary["false_rollback"]) == GATES
        assert summary["rollback_time_ratio_goal"] == 0.6
        assert summary["rollback_time_ratio_at_2x_margin"] > 0
        assert isinstance(summary["false_rollback_at_most_alpha"], bool)
    assert "ours / fixed horizon" in result.stdout
    assert "threshold gate on the silent regression" in result.stdout
