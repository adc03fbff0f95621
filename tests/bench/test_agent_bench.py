"""bench/agent.py end to end in --quick mode: proves the harness measures every figure; asserts no timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIELDS = {
    "predictor": {"rows", "ratio", "met", "goal_ratio", "inline", "process"},
    "summarizer": {
        "per_inference_us",
        "amortized_us",
        "copy_us",
        "drain_us",
        "block_rows",
        "observe",
        "back_to_back_us",
        "bare_inference_us",
        "ratio",
        "features",
        "goal_us",
        "met",
    },
    "switch": {"switch_ms", "bare_replace_ms", "ratio", "goal_ms", "met"},
    "install": {"bundle_mb", "install_s", "sha256_copy_s", "ratio", "goal_s", "met"},
    "idle_rss": {
        "agent_rss_mb",
        "agent_loop_without_cli_rss_mb",
        "first_boot_server_down_rss_mb",
        "bare_python_rss_mb",
        "floors_rss_mb",
        "ratio",
        "goal_mb",
        "met",
        "files_written_under_home",
        "heavy_modules_loaded_by_the_cli",
        "heavy_modules_loaded_by_the_agent_loop",
    },
}


@pytest.mark.slow
def test_quick_run_reports_every_figure_against_its_baseline(tmp_path):
    out = tmp_path / "agent.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "agent.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["quick"] is True
    for section, fields in FIELDS.items():
        assert fields <= set(report[section]), (section, fields - set(report[section]))
        assert report[section]["ratio"] > 0
        assert isinstance(report[section]["met"], bool)
    for isolation in ("inline", "process"):
        run = report["predictor"][isolation]
        assert {"ours_ms", "baseline_ms", "ratio", "rounds", "calls_per_round"} <= set(run)
        assert run["ours_ms"] > 0
        assert run["baseline_ms"] > 0
    assert report["predictor"]["inline"]["another_session_ratio"] > 0  # the spread of session placement
    assert report["predictor"]["process"]["floor_vs_local_ratio"] > 0  # what the process floor itself costs
    process = report["predictor"]["process"]
    assert len(process["pair_ratios"]) == 3  # three fresh (worker, floor) pairs, the median reported
    assert process["ratio"] == sorted(process["pair_ratios"])[1]
    summarizer = report["summarizer"]
    assert summarizer["drains"] > 0  # the block binning was timed, apart from the copies
    assert {"per_inference_us", "amortized_us", "copy_us", "drain_us", "mean_us"} <= set(summarizer["observe"])
    assert 9 < report["install"]["bundle_mb"] < 12  # the 10 MB bundle the goal speaks of
    assert report["idle_rss"]["files_written_under_home"] == []  # ONNX Runtime keeps out of ~/.cache
    for name in ("predictor", "summarizer", "switch", "install", "idle RSS"):
        assert any(line.startswith(name) for line in result.stdout.splitlines()), name
