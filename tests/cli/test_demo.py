"""``modelfleet demo --quick --no-serve``: the fleet story runs end to end and every outcome is the run's own."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_catches_the_regression_retrains_on_drift_and_completes_v3(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "demo", "--quick", "--no-serve", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    text = result.stdout
    assert result.returncode == 0, text[-4000:] + result.stderr[-4000:]
    for check in (
        "2.0.0 rolled back by a label-free gate",
        "retrain.requested received by the demo's webhook",
        "3.0.0 complete (stable)",
        "every device runs a working model",
        "summaries acknowledged = summaries stored",
    ):
        assert f"OK   {check}" in text, check
    assert "FAILED" not in text
    # v1 is trained, quantized and signed; v2 looks better offline than v1 does.
    built = dict(re.findall(r"built and signed (\d\.0\.0): validation accuracy (0\.\d+), INT8 top-1 agreement", text))
    assert set(built) == {"1.0.0", "2.0.0", "3.0.0"}
    assert float(built["2.0.0"]) > float(built["1.0.0"])
    # The rollback names the gate and the numbers behind it.
    rollback = re.search(r"rollback: canary -> rolling_back \(stage 0\) - gate failed: mean_confidence .*p=(\S+)", text)
    assert rollback is not None, text[-4000:]
    assert float(rollback.group(1)) < 0.01
    assert re.search(
        r"mean_confidence: treated 0\.\d+ vs holdout 0\.\d+, difference -0\.\d+ \[-0\.\d+, -0\.\d+\]", text
    )
    assert "promote: canary -> complete (stage 2)" in text
    sent, stored = map(int, re.search(r"summaries: (\d+) acknowledged to devices, (\d+) stored", text).groups())
    assert sent == stored > 0
    report = workdir / "report.html"
    assert f"report: {report.resolve()}" in text.replace("\n", "")
    page = report.read_text()
    assert page.count("<svg") == 3
    assert "2.0.0 rollback" in page
    assert "held: rollout 3.0.0 complete" in page
