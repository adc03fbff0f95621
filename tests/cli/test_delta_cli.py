"""``modelfleet bundle diff`` and ``bundle patch`` as users run them: real processes, real files, exit codes."""

import subprocess
import sys

import pytest

from modelfleet.sim._model_pairs import bundle_pair


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args], capture_output=True, text=True, check=False, timeout=120
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return bundle_pair(tmp_path_factory.mktemp("pair"), model_bytes=32 * 1024, precision="int8", scenario="finetune")


def test_diff_then_patch_rebuilds_the_new_bundle_and_says_how_much_it_saved(pair, tmp_path):
    delta, rebuilt = tmp_path / "d.mfd", tmp_path / "rebuilt.mfb"
    diffed = run("bundle", "diff", str(pair.old), str(pair.new), "-o", str(delta))
    assert diffed.returncode == 0, diffed.stderr
    assert "codec tensor" in diffed.stdout
    assert "ratio 0." in diffed.stdout
    assert "candidates: bsdiff4" in diffed.stdout
    patched = run("bundle", "patch", str(pair.old), str(delta), "-o", str(rebuilt))
    assert patched.returncode == 0, patched.stderr
    assert rebuilt.read_bytes() == pair.new.read_bytes()


def test_patch_on_the_wrong_base_is_refused_and_writes_nothing(pair, tmp_path):
    delta, rebuilt = tmp_path / "d.mfd", tmp_path / "rebuilt.mfb"
    assert run("bundle", "diff", str(pair.old), str(pair.new), "-o", str(delta)).returncode == 0
    patched = run("bundle", "patch", str(pair.new), str(delta), "-o", str(rebuilt))
    assert patched.returncode == 1
    assert "REFUSED" in patched.stderr
    assert "wrong_base" in patched.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.mfd"]
