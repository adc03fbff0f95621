"""The ``modelfleet`` command as users run it: a real process, real files, real exit codes."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelfleet.sim.models import digits_mlp


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two key pairs, a trained digits model and its validation set."""
    root = tmp_path_factory.mktemp("cli")
    for name in ("release-1", "release-2"):
        assert run("keys", "generate", "--out", str(root / "keys"), "--name", name).returncode == 0
    case = digits_mlp(root / "digits.onnx", seed=1)
    np.savez(root / "val.npz", x=case.x_val, y=case.y_val)
    (root / "labels.txt").write_text("\n".join(case.labels) + "\n")
    (root / "thresholds.json").write_text(json.dumps({"reject_below": 0.55}))
    return root


@pytest.fixture(scope="module")
def built(workspace):
    out = workspace / "digits-1.0.0.mfb"
    result = run(
        "bundle", "build", str(workspace / "digits.onnx"),
        "--name", "digits", "--version", "1.0.0", "--release", "1",
        "--validation", str(workspace / "val.npz"),
        "--key", str(workspace / "keys/release-1.key"), "--key", str(workspace / "keys/release-2.key"),
        "--labels", str(workspace / "labels.txt"), "--thresholds", str(workspace / "thresholds.json"),
        "--max-latency-ms", "25", "--arch", "x86_64", "--arch", "aarch64", "--no-progress",
        "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "built" in result.stdout
    return out


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(workspace):
    key = workspace / "keys/release-1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (workspace / "keys/release-1.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_keys_generate_refuses_to_overwrite_a_key(workspace):
    result = run("keys", "generate", "--out", str(workspace / "keys"), "--name", "release-1")
    assert result.returncode == 1
    assert "refusing to overwrite" in result.stderr
    assert "[key_exists]" in result.stderr


def test_verify_accepts_with_two_of_two_keys_in_one_line(workspace, built):
    result = run(
        "bundle", "verify", str(built),
        "--trust", str(workspace / "keys/release-1.pub"), "--trust", str(workspace / "keys/release-2.pub"),
        "--threshold", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith("OK")
    assert "digits 1.0.0 (release 1)" in result.stdout


def test_verify_refuses_a_flipped_byte_naming_the_member(workspace, built, tmp_path):
    data = bytearray(built.read_bytes())
    data[-2048] ^= 0xFF  # inside the last payload member (model.onnx)
    tampered = tmp_path / "tampered.mfb"
    tampered.write_bytes(bytes(data))
    result = run("bundle", "verify", str(tampered), "--trust", str(workspace / "keys/release-1.pub"))
    assert result.returncode == 1
    assert "REFUSED" in result.stderr
    assert "model.onnx" in result.stderr
    assert "[hash_mismatch]" in result.stderr


def test_verify_refuses_when_threshold_exceeds_the_keys_given(workspace, built):
    result = run("bundle", "verify", str(built), "--trust", str(workspace / "keys/release-1.pub"), "--threshold", "2")
    assert result.returncode == 1
    assert "[bad_threshold]" in result.stderr


def test_verify_refuses_a_bundle_signed_by_other_keys(workspace, built, tmp_path):
    result = run("keys", "generate", "--out", str(tmp_path), "--name", "stranger")
    assert result.returncode == 0
    refused = run("bundle", "verify", str(built), "--trust", str(tmp_path / "stranger.pub"))
    assert refused.returncode == 1
    assert "[unknown_key]" in refused.stderr


def test_inspect_json_holds_the_manifest_and_says_it_is_unverified(built):
    result = run("bundle", "inspect", str(built), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["verified"] is False
    assert document["manifest"]["name"] == "digits"
    assert document["manifest"]["behaviour"]["thresholds"] == {"reject_below": "0.55"}
    assert document["manifest"]["contract"]["hardware"]["arch"] == ["x86_64", "aarch64"]
    assert len(document["signatures"]) == 2


def test_inspect_draws_contract_budgets_metrics_and_histograms(built):
    result = run("bundle", "inspect", str(built))
    assert result.returncode == 0, result.stderr
    for expected in ("digits 1.0.0", "inputs", "X: float32[?, 64]", "latency <= 25 ms", "accuracy=", "confidence"):
        assert expected in result.stdout
    assert any(bar in result.stdout for bar in "▁▂▃▄▅▆▇█")
    assert "... 52 more" in result.stdout


def test_build_refuses_a_validation_set_of_the_wrong_width(workspace, tmp_path):
    np.savez(tmp_path / "narrow.npz", x=np.zeros((10, 63), dtype=np.float32))
    out = tmp_path / "never.mfb"
    result = run(
        "bundle", "build", str(workspace / "digits.onnx"), "--name", "digits", "--version", "1.0.1",
        "--release", "2", "--validation", str(tmp_path / "narrow.npz"),
        "--key", str(workspace / "keys/release-1.key"), "--no-progress", "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 1
    assert "64" in result.stderr
    assert "63" in result.stderr
    assert not out.exists()
    assert list(tmp_path.glob(".never.mfb*")) == []


def test_build_refuses_a_version_that_is_not_semver(workspace, tmp_path):
    result = run(
        "bundle", "build", str(workspace / "digits.onnx"), "--name", "digits", "--version", "1.0",
        "--release", "2", "--validation", str(workspace / "val.npz"),
        "--key", str(workspace / "keys/release-1.key"), "--no-progress", "-o", str(tmp_path / "x.mfb"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "semantic version" in result.stderr


def test_unknown_quantization_scheme_is_a_clear_error(workspace, tmp_path):
    result = run(
        "bundle", "build", str(workspace / "digits.onnx"), "--name", "digits", "--version", "1.0.1",
        "--release", "2", "--validation", str(workspace / "val.npz"), "--quantize", "int4",
        "--key", str(workspace / "keys/release-1.key"), "-o", str(tmp_path / "x.mfb"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "--quantize must be 'none' or 'int8'" in result.stderr


def test_missing_file_is_a_usage_error_not_a_traceback(tmp_path):
    result = run("bundle", "inspect", str(tmp_path / "nope.mfb"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_version_flag():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("modelfleet ")
