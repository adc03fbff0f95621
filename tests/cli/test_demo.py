"""The demo runs end to end and every tampered copy is refused for its own reason."""

import re
import subprocess
import sys


def test_demo_walks_through_build_verify_fit_and_tamper(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "bundle walk-through" in text
    assert re.search(r"built digits-1\.1\.0\.mfb: .* int8, validation accuracy 0\.9\d+, top-1 agreement", text)
    assert "OK digits-1.1.0.mfb" in text
    assert "gateway, Pi 4: fits" in text
    assert re.search(r"old ARMv7 box: refused, \d+ reason\(s\)", text)
    codes = ["hash_mismatch", "trailing_data", "truncated", "unknown_key", "below_threshold", "duplicate_signature"]
    for code in codes:
        assert code in text, code
    assert "6 of 6 tampered copies refused" in text
    assert "ACCEPTED" not in text
    assert "left files behind" not in text
