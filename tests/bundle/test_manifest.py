"""The manifest schema: exact decimals, consistent file lists, semver, and one code per refusal."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.bundle import Behaviour, canonical_bytes, parse_manifest
from modelfleet.errors import ManifestError


def _edited(manifest, edit) -> bytes:
    """Canonical bytes of ``manifest`` after ``edit`` changed its JSON form."""
    data = json.loads(manifest.to_bytes())
    edit(data)
    return canonical_bytes(data)


def _bits(value: float) -> bytes:
    return struct.pack(">d", value)


def test_manifest_bytes_parse_back_to_the_same_manifest(manifest):
    assert parse_manifest(manifest.to_bytes()) == manifest


# ------------------------------------------------------------------ decimals


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_decimal_survives_bytes_and_back_exactly(manifest, value):
    with_value = manifest.model_copy(update={"behaviour": Behaviour(thresholds={"accept": value})})
    signed = with_value.to_bytes()

    parsed = parse_manifest(signed)

    assert _bits(parsed.behaviour.thresholds["accept"]) == _bits(value)
    assert parsed.to_bytes() == signed


def test_decimals_travel_as_their_shortest_round_trip_text(manifest):
    with_value = manifest.model_copy(update={"behaviour": Behaviour(thresholds={"accept": 0.1, "reject": 1e-300})})

    assert b'"thresholds":{"accept":"0.1","reject":"1e-300"}' in with_value.to_bytes()


def test_open_histogram_edges_travel_as_inf_text(manifest):
    signed = manifest.to_bytes()

    assert b'"edges":["-inf","0.0","inf"]' in signed
    assert parse_manifest(signed).evidence.references.features[0].edges == (-math.inf, 0.0, math.inf)


# ------------------------------------------------------------------ refusals and their codes


def _set(*path, to):
    """An edit that sets the JSON value at ``path`` to ``to``."""
    *parents, key = path

    def edit(data):
        for part in parents:
            data = data[part]
        data[key] = to

    return edit


def _delete(key):
    return lambda data: data.pop(key)


def _add_file(path):
    def edit(data):
        data["files"] = sorted([*data["files"], {"path": path, "size": 1, "sha256": "c" * 64}], key=lambda f: f["path"])

    return edit


def _reverse_files(data):
    data["files"].reverse()


def _duplicate_first_file(data):
    data["files"].insert(0, data["files"][0])


SCHEMA_REFUSALS = [
    # files
    pytest.param(_reverse_files, "schema", "sorted", id="files_unsorted"),
    pytest.param(_duplicate_first_file, "schema", "no duplicates", id="files_duplicated"),
    pytest.param(
        _set("model", "file", to="other.onnx"), "schema", "model.file names 'other.onnx'", id="model_file_not_in_files"
    ),
    pytest.param(
        _set("evidence", "golden", "file", to="gold.npz"),
        "schema",
        "evidence.golden.file",
        id="golden_file_not_in_files",
    ),
    pytest.param(_add_file("manifest.sig"), "schema", "reserved", id="reserved_name_manifest_sig"),
    pytest.param(_add_file("manifest.json"), "schema", "reserved", id="reserved_name_manifest_json"),
    pytest.param(_add_file("a/b"), "schema", "files.0.path", id="file_name_with_slash"),
    pytest.param(_add_file("..x"), "schema", "files.0.path", id="file_name_starting_with_dot"),
    pytest.param(_set("files", 0, "sha256", to="A" * 64), "schema", "sha256", id="sha256_upper_case"),
    # identity
    pytest.param(_set("release", to="3"), "release_not_integer", "release", id="release_as_string"),
    pytest.param(_set("release", to=True), "release_not_integer", "release", id="release_as_boolean"),
    pytest.param(_set("release", to=-1), "invalid_release", "release", id="release_negative"),
    pytest.param(_set("name", to="Tiny Classifier"), "schema", "name", id="name_with_space"),
    pytest.param(_set("format", to="modelfleet.bundle.v2"), "schema", "format", id="unknown_format"),
    pytest.param(_set("created", to="2026-01-01 00:00:00"), "schema", "created", id="created_not_iso"),
    pytest.param(
        _set("created", to="\uff12\uff10\uff12\uff16-01-01T00:00:00Z"),
        "schema",
        "created",
        id="created_fullwidth_digits",
    ),
    pytest.param(_set("install_script", to="sh"), "unknown_field", "install_script", id="unknown_field"),
    pytest.param(
        _set("evidence", "golden", "url", to="x"), "unknown_field", "evidence.golden.url", id="nested_unknown"
    ),
    pytest.param(_delete("files"), "missing_field", "files", id="missing_field"),
    # contract
    pytest.param(_set("contract", "inputs", 0, "shape", to=["N\n", 4]), "schema", "shape", id="symbolic_dim_newline"),
    pytest.param(_set("contract", "inputs", 0, "shape", to=[0, 4]), "schema", "shape", id="zero_dim"),
    pytest.param(_set("contract", "head", "scores_output", to="logits"), "schema", "not an output", id="head_unknown"),
    pytest.param(_set("contract", "labels", to=["cat", "dog"]), "schema", "2 labels for 3 classes", id="labels_short"),
    pytest.param(_set("contract", "runtime", "specifier", to="~=banana"), "schema", "PEP 440", id="bad_specifier"),
    # decimals and histograms
    pytest.param(_set("evidence", "golden", "atol", to="1e-5x"), "schema", "not a decimal", id="decimal_not_a_number"),
    pytest.param(_set("evidence", "golden", "atol", to="nan"), "schema", "NaN", id="decimal_nan"),
    pytest.param(_set("evidence", "golden", "atol", to="inf"), "schema", "finite", id="decimal_infinite"),
    pytest.param(_set("evidence", "golden", "atol", to="-0.5"), "schema", "atol", id="tolerance_negative"),
    pytest.param(
        _set("evidence", "references", "confidence", "edges", to=["0.0", "0.8", "0.5", "1.0"]),
        "schema",
        "strictly increasing",
        id="edges_not_increasing",
    ),
    pytest.param(
        _set("evidence", "references", "confidence", "counts", to=[1, 2]),
        "schema",
        "2 counts for 4 edges",
        id="counts_do_not_fit_edges",
    ),
]


@pytest.mark.parametrize(("edit", "code", "says"), SCHEMA_REFUSALS)
def test_schema_refusal_has_its_code_and_names_the_problem(manifest, edit, code, says):
    with pytest.raises(ManifestError) as refused:
        parse_manifest(_edited(manifest, edit))

    assert refused.value.code == code
    assert says in refused.value.message


# ------------------------------------------------------------------ semver (examples from semver.org)

VALID_SEMVER = [
    "0.0.4",
    "1.2.3",
    "10.20.30",
    "1.1.2-prerelease+meta",
    "1.1.2+meta",
    "1.1.2+meta-valid",
    "1.0.0-alpha",
    "1.0.0-beta",
    "1.0.0-alpha.beta",
    "1.0.0-alpha.beta.1",
    "1.0.0-alpha.1",
    "1.0.0-alpha0.valid",
    "1.0.0-alpha.0valid",
    "1.0.0-alpha-a.b-c-somethinglong+build.1-aef.1-its-okay",
    "1.0.0-rc.1+build.1",
    "2.0.0-rc.1+build.123",
    "1.2.3-beta",
    "10.2.3-DEV-SNAPSHOT",
    "1.2.3-SNAPSHOT-123",
    "1.0.0",
    "2.0.0",
    "1.1.7",
    "2.0.0+build.1848",
    "2.0.1-alpha.1227",
    "1.0.0-alpha+beta",
    "1.2.3----RC-SNAPSHOT.12.9.1--.12+788",
    "1.2.3----R-S.12.9.1--.12+meta",
    "1.2.3----RC-SNAPSHOT.12.9.1--.12",
    "1.0.0+0.build.1-rc.10000aaa-kk-0.1",
    "99999999999999999999999.999999999999999999.99999999999999999",
    "1.0.0-0A.is.legal",
]

INVALID_SEMVER = [
    "1",
    "1.2",
    "1.2.3-0123",
    "1.2.3-0123.0123",
    "1.1.2+.123",
    "+invalid",
    "-invalid",
    "-invalid+invalid",
    "-invalid.01",
    "alpha",
    "alpha.beta",
    "alpha.beta.1",
    "alpha.1",
    "alpha+beta",
    "alpha_beta",
    "alpha.",
    "alpha..",
    "beta",
    "1.0.0-alpha_beta",
    "-alpha.",
    "1.0.0-alpha..",
    "1.0.0-alpha..1",
    "1.0.0-alpha...1",
    "1.0.0-alpha....1",
    "1.0.0-alpha.....1",
    "1.0.0-alpha......1",
    "1.0.0-alpha.......1",
    "01.1.1",
    "1.01.1",
    "1.1.01",
    "1.2.3.DEV",
    "1.2-SNAPSHOT",
    "1.2.31.2.3----RC-SNAPSHOT.12.09.1--..12+788",
    "1.2-RC-SNAPSHOT",
    "-1.0.3-gamma+b7718",
    "+justmeta",
    "9.8.7+meta+meta",
    "9.8.7-whatever+meta+meta",
    "99999999999999999999999.999999999999999999.99999999999999999----RC-SNAPSHOT.12.09.1--------------------------------..12",
    # not on semver.org's list; each slipped through re.match before the fix
    "1.0.0\n",
    "1\u0661.0.0",
]


@pytest.mark.parametrize("version", VALID_SEMVER)
def test_semver_org_valid_versions_are_accepted(manifest, version):
    assert parse_manifest(_edited(manifest, _set("version", to=version))).version == version


@pytest.mark.parametrize("version", INVALID_SEMVER)
def test_semver_org_invalid_versions_are_refused(manifest, version):
    with pytest.raises(ManifestError) as refused:
        parse_manifest(_edited(manifest, _set("version", to=version)))

    assert refused.value.code == "invalid_semver"


@pytest.mark.parametrize("parent", ["1.1", "v1.1.0"])
def test_parent_must_be_semver_too(manifest, parent):
    with pytest.raises(ManifestError) as refused:
        parse_manifest(_edited(manifest, _set("parent", to=parent)))

    assert refused.value.code == "invalid_semver"


def test_first_release_has_no_parent(manifest):
    assert parse_manifest(_edited(manifest, _set("parent", to=None))).parent is None
