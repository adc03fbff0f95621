"""bench/experiments.py end to end with a tiny budget: proves the harness and the JSON fields, asserts no timings."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"ab", "shadow", "time_slice"}
KIND_FIELDS = {
    "planned_devices",
    "stream_sd",
    "devices_for_power",
    "power_by_plan",
    "power_by_plan_ci95",
    "median_devices_to_winner",
    "false_winner",
    "false_winner_ci95",
}
RATIOS = {
    "ab_over_shadow_planned",
    "ab_over_shadow_simulated",
    "ab_over_time_slice_planned",
    "ab_over_time_slice_simulated",
}


def test_a_small_run_reports_devices_needed_by_every_kind_and_the_ratios(tmp_path):
    out = tmp_path / "experiments.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "experiments.py"), "--runs", "20", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "experiments"
    assert report["settings"]["runs"] == 20
    assert {fleet["name"] for fleet in report["fleets"]} == {"different_devices", "alike_devices"}
    for fleet in report["fleets"]:
        assert set(fleet["kinds"]) == KINDS
        for kind in fleet["kinds"].values():
            assert set(kind) >= KIND_FIELDS
            assert kind["planned_devices"] > 0
            assert 0.0 <= kind["false_winner"] <= 1.0
            low, high = kind["power_by_plan_ci95"]
            assert low <= kind["power_by_plan"] <= high
        assert set(fleet["ratios"]) == RATIOS
        assert fleet["ratios"]["ab_over_shadow_planned"] > 1.0  # the planner alone: pairing drops the device spread
    assert "A/B / shadow" in result.stdout
    assert "A/B / time-slice" in result.stdout
