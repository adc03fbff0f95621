"""bench/delta.py end to end on the smallest pair: proves the harness and the JSON fields, asserts no timings."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL_FIELDS = {"bytes", "build_s", "apply_s", "build_peak_rss", "apply_peak_rss"}


def test_a_quick_run_reports_every_tool_the_floor_and_the_goals(tmp_path):
    out = tmp_path / "delta.json"
    argv = [sys.executable, str(ROOT / "bench" / "delta.py"), "--quick", "--sizes", "65536"]
    argv += ["--precisions", "int8", "--scenarios", "finetune", "--out", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "delta"
    (row,) = report["rows"]
    assert (row["precision"], row["scenario"], row["model_bytes"]) == ("int8", "finetune", 65536)
    assert {"ours", "bsdiff4", "zstd"} <= set(row["tools"])
    for tool in row["tools"].values():
        assert set(tool) >= TOOL_FIELDS
        assert 0 < tool["bytes"] < row["full_bytes"]
    assert row["tools"]["ours"]["codec"] == "tensor"
    assert row["tools"]["ours"]["format_version"] == 2
    assert 0 < row["floor_bytes"] < row["tools"]["ours"]["bytes"]
    assert row["goals"]["not_larger_than_best_generic"] is True
    assert row["goals"]["vs_generic_goal"] == 0.92
    assert "never larger than the best generic" in result.stdout
    assert "ours / floor" in result.stdout
