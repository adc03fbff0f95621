"""Compatibility of a bundle with a device and an application, as scenarios."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from modelfleet.bundle import (
    AppContract,
    Behaviour,
    Contract,
    DeviceProfile,
    Evidence,
    FeatureHistogram,
    FileEntry,
    Golden,
    HardwareTargets,
    Head,
    Histogram,
    Incompatibility,
    IncompatibilityCode,
    Manifest,
    ModelInfo,
    Preprocessing,
    PreprocessingRef,
    Provenance,
    Quantization,
    References,
    RuntimeRequirement,
    TensorSpec,
    check_compatibility,
    require_compatible,
)
from modelfleet.errors import IncompatibleError

MODEL_BYTES = 40_000
GOLDEN_BYTES = 2_000
PAYLOAD_BYTES = MODEL_BYTES + GOLDEN_BYTES
MIB = 1 << 20

X = TensorSpec(name="X", dtype="float32", shape=("N", 64))
LABEL = TensorSpec(name="label", dtype="int64", shape=("N",))
PROBABILITIES = TensorSpec(name="probabilities", dtype="float32", shape=("N", 10))
MASK = TensorSpec(name="mask", dtype="uint8", shape=("N", 64))
IDS = TensorSpec(name="ids", dtype="int64", shape=("N",))

HARDWARE = HardwareTargets(
    arch=("aarch64", "x86_64"),
    device_types=("rpi4", "jetson-nano"),
    required_tags={"camera": "v2", "site": "plant-a"},
    min_ram_bytes=256 * MIB,
    min_disk_bytes=MIB,
    accelerator="npu",
)


def spec(tensor: TensorSpec, **changes: Any) -> TensorSpec:
    """The same tensor with some fields changed (validated again)."""
    return TensorSpec(**{**tensor.model_dump(), **changes})


def make_contract(**changes: Any) -> Contract:
    fields: dict[str, Any] = {
        "inputs": (X,),
        "outputs": (LABEL, PROBABILITIES),
        "head": Head(scores_output="probabilities", scores="probabilities", label_output="label", n_classes=10),
        "quantization": Quantization(scheme="int8"),
        "preprocessing": Preprocessing(id="standard-scaler", version=2),
        "runtime": RuntimeRequirement(name="onnxruntime", specifier=">=1.17,<2"),
        "hardware": HARDWARE,
    }
    return Contract(**{**fields, **changes})


def make_manifest(**contract_changes: Any) -> Manifest:
    edges = (float("-inf"), -1.0, 0.0, 1.0, float("inf"))
    references = References(
        n=100,
        features=(
            FeatureHistogram(input="X", index=0, edges=edges, counts=(10, 40, 40, 10)),
            FeatureHistogram(input="X", index=1, edges=edges, counts=(5, 45, 45, 5)),
        ),
        confidence=Histogram(edges=(0.0, 0.5, 0.9, 1.0), counts=(10, 30, 60)),
    )
    return Manifest(
        format="modelfleet.bundle.v1",
        name="digits",
        version="1.2.0",
        release=3,
        created="2024-05-01T12:00:00Z",
        model=ModelInfo(file="model.onnx", format="onnx", opset=17),
        files=(
            FileEntry(path="golden.npz", size=GOLDEN_BYTES, sha256="ab" * 32),
            FileEntry(path="model.onnx", size=MODEL_BYTES, sha256="cd" * 32),
        ),
        contract=make_contract(**contract_changes),
        behaviour=Behaviour(),
        evidence=Evidence(
            references=references,
            golden=Golden(file="golden.npz", count=4, atol=1e-4, rtol=1e-3),
            provenance=Provenance(tool="modelfleet test"),
        ),
    )


FIT_DEVICE: dict[str, Any] = {
    "arch": "aarch64",
    "device_type": "rpi4",
    "runtimes": {"onnxruntime": "1.17.3"},
    "ram_bytes": 512 * MIB,
    "disk_free_bytes": 64 * MIB,
    "tags": {"camera": "v2", "site": "plant-a", "floor": "2"},
    "accelerators": ("npu",),
    "quantization": ("none", "int8"),
}
FIT_APP: dict[str, Any] = {
    "inputs": (X,),
    "outputs": (LABEL, PROBABILITIES),
    "preprocessing": PreprocessingRef(id="standard-scaler", version=2),
}

MANIFEST = make_manifest()


def device(**changes: Any) -> DeviceProfile:
    return DeviceProfile(**{**FIT_DEVICE, **changes})


def app(**changes: Any) -> AppContract:
    return AppContract(**{**FIT_APP, **changes})


def codes(reasons: tuple[Incompatibility, ...]) -> list[str]:
    return [reason.code for reason in reasons]


# Each row breaks one thing in a fitting (manifest, device, app) and names the reason.
ONE_MISMATCH = [
    pytest.param({"inputs": (X, MASK)}, {}, {}, "missing_input", "contract.inputs[mask]", id="input-not-fed"),
    pytest.param({}, {}, {"inputs": (X, MASK)}, "unexpected_input", "contract.inputs[mask]", id="input-not-taken"),
    pytest.param(
        {}, {}, {"inputs": (spec(X, dtype="float64"),)}, "input_dtype", "contract.inputs[X].dtype", id="in-dtype"
    ),
    pytest.param(
        {}, {}, {"inputs": (spec(X, shape=("N", 64, 1)),)}, "input_rank", "contract.inputs[X].shape", id="rank"
    ),
    pytest.param(
        {}, {}, {"inputs": (spec(X, shape=("N", 32)),)}, "input_shape", "contract.inputs[X].shape[1]", id="dim"
    ),
    pytest.param(
        {},
        {},
        {"inputs": (spec(X, shape=("N", "F")),)},
        "input_shape",
        "contract.inputs[X].shape[1]",
        id="app-symbolic",
    ),
    pytest.param(
        {},
        {},
        {"outputs": (LABEL, PROBABILITIES, spec(X, name="embedding"))},
        "missing_output",
        "contract.outputs[embedding]",
        id="output-absent",
    ),
    pytest.param(
        {},
        {},
        {"outputs": (spec(LABEL, dtype="int32"),)},
        "output_dtype",
        "contract.outputs[label].dtype",
        id="out-dtype",
    ),
    pytest.param(
        {},
        {},
        {"outputs": (spec(PROBABILITIES, shape=("N", 5)),)},
        "output_shape",
        "contract.outputs[probabilities].shape[1]",
        id="out-dim",
    ),
    pytest.param(
        {},
        {},
        {"outputs": (spec(LABEL, shape=("N", 1)),)},
        "output_shape",
        "contract.outputs[label].shape",
        id="out-rank",
    ),
    pytest.param(
        {},
        {},
        {"preprocessing": PreprocessingRef(id="min-max", version=2)},
        "preprocessing_id",
        "contract.preprocessing.id",
        id="prep-id",
    ),
    pytest.param(
        {},
        {},
        {"preprocessing": PreprocessingRef(id="standard-scaler", version=1)},
        "preprocessing_version",
        "contract.preprocessing.version",
        id="prep-version",
    ),
    pytest.param(
        {}, {}, {"preprocessing": None}, "preprocessing_missing", "contract.preprocessing", id="app-applies-none"
    ),
    pytest.param(
        {"preprocessing": None}, {}, {}, "preprocessing_missing", "contract.preprocessing", id="bundle-declares-none"
    ),
    pytest.param({}, {"quantization": ("none",)}, {}, "quantization", "contract.quantization.scheme", id="no-int8"),
    pytest.param({}, {"runtimes": {"tflite": "2.14.0"}}, {}, "runtime_missing", "contract.runtime.name", id="no-ort"),
    pytest.param(
        {}, {"runtimes": {"onnxruntime": "1.16.3"}}, {}, "runtime_version", "contract.runtime.specifier", id="old"
    ),
    pytest.param(
        {}, {"runtimes": {"onnxruntime": "2.0.0"}}, {}, "runtime_version", "contract.runtime.specifier", id="new"
    ),
    pytest.param({}, {"arch": "armv7l"}, {}, "arch", "contract.hardware.arch", id="arch"),
    pytest.param({}, {"device_type": "jetson-orin"}, {}, "device_type", "contract.hardware.device_types", id="type"),
    pytest.param({}, {"device_type": None}, {}, "device_type", "contract.hardware.device_types", id="type-unknown"),
    pytest.param({}, {"tags": {"camera": "v2"}}, {}, "tag", "contract.hardware.required_tags[site]", id="tag-missing"),
    pytest.param(
        {},
        {"tags": {"camera": "v2", "site": "plant-b"}},
        {},
        "tag",
        "contract.hardware.required_tags[site]",
        id="tag-value",
    ),
    pytest.param({}, {"ram_bytes": 128 * MIB}, {}, "ram", "contract.hardware.min_ram_bytes", id="ram"),
    pytest.param({}, {"disk_free_bytes": MIB - 1}, {}, "disk", "contract.hardware.min_disk_bytes", id="disk-min"),
    pytest.param(
        {"hardware": HARDWARE.model_copy(update={"min_disk_bytes": 0})},
        {"disk_free_bytes": PAYLOAD_BYTES - 1},
        {},
        "disk",
        "files",
        id="payload-does-not-fit",
    ),
    pytest.param({}, {"accelerators": ("gpu",)}, {}, "accelerator", "contract.hardware.accelerator", id="accelerator"),
]


@pytest.mark.parametrize(("manifest_changes", "device_changes", "app_changes", "code", "field"), ONE_MISMATCH)
def test_one_change_gives_one_reason(manifest_changes, device_changes, app_changes, code, field):
    manifest = make_manifest(**manifest_changes)

    reasons = check_compatibility(manifest, device(**device_changes), app(**app_changes))

    assert codes(reasons) == [code]
    assert reasons[0].field == field


def test_the_table_covers_every_code():
    assert {row.values[3] for row in ONE_MISMATCH} == set(get_args(IncompatibilityCode))


def test_a_fitting_device_and_app_fit():
    assert check_compatibility(MANIFEST, device(), app()) == ()


def test_without_an_app_only_the_device_is_checked():
    assert check_compatibility(MANIFEST, device()) == ()
    assert codes(check_compatibility(MANIFEST, device(arch="armv7l"))) == ["arch"]


def test_a_bundle_without_hardware_targets_fits_any_device():
    manifest = make_manifest(hardware=HardwareTargets())
    bare = DeviceProfile(arch="riscv64", runtimes={"onnxruntime": "1.18.0"}, ram_bytes=0, disk_free_bytes=PAYLOAD_BYTES)

    assert check_compatibility(manifest, bare) == ()


WRONG_APP = {
    "inputs": (spec(X, dtype="float64", shape=("N", 32)), spec(IDS, shape=("N", 1)), spec(X, name="extra")),
    "outputs": (spec(LABEL, dtype="int32"), spec(PROBABILITIES, shape=("N", 5)), spec(X, name="embedding")),
}
WRONG_DEVICE = {
    "arch": "armv7l",
    "device_type": "pc",
    "tags": {"site": "plant-b"},
    "ram_bytes": MIB,
    "disk_free_bytes": 1,
    "accelerators": (),
    "quantization": ("none",),
}
HARDWARE_CODES = ["arch", "device_type", "tag", "tag", "ram", "disk", "accelerator"]


@pytest.mark.parametrize(
    ("preprocessing", "runtimes", "middle"),
    [
        pytest.param(None, {}, ["preprocessing_missing", "quantization", "runtime_missing"], id="missing"),
        pytest.param(
            PreprocessingRef(id="standard-scaler", version=9),
            {"onnxruntime": "1.9.0"},
            ["preprocessing_version", "quantization", "runtime_version"],
            id="wrong-version",
        ),
        pytest.param(
            PreprocessingRef(id="min-max", version=9),
            {"onnxruntime": "1.9.0"},
            ["preprocessing_id", "quantization", "runtime_version"],
            id="wrong-id",
        ),
    ],
)
def test_wrong_in_every_way_reports_everything_in_order(preprocessing, runtimes, middle):
    manifest = make_manifest(inputs=(X, MASK, IDS))
    wrong_device = device(**WRONG_DEVICE, runtimes=runtimes)
    wrong_app = app(**WRONG_APP, preprocessing=preprocessing)

    reasons = check_compatibility(manifest, wrong_device, wrong_app)

    assert codes(reasons) == [
        "missing_input",
        "unexpected_input",
        "input_dtype",
        "input_rank",
        "input_shape",
        "missing_output",
        "output_dtype",
        "output_shape",
        *middle,
        *HARDWARE_CODES,
    ]
    assert [r.field for r in reasons if r.code == "tag"] == [
        "contract.hardware.required_tags[camera]",
        "contract.hardware.required_tags[site]",
    ]


def test_the_order_of_the_codes_is_the_documented_order():
    manifest = make_manifest(inputs=(X, MASK, IDS))
    reasons = check_compatibility(manifest, device(**WRONG_DEVICE, runtimes={}), app(**WRONG_APP, preprocessing=None))

    ranks = [get_args(IncompatibilityCode).index(code) for code in codes(reasons)]

    assert ranks == sorted(ranks)


def test_require_compatible_raises_with_every_reason_named():
    wrong = device(arch="armv7l", ram_bytes=MIB, runtimes={"onnxruntime": "1.9.0"})

    with pytest.raises(IncompatibleError) as caught:
        require_compatible(MANIFEST, wrong, app())

    error = caught.value
    assert error.code == "incompatible"
    assert error.reasons == check_compatibility(MANIFEST, wrong, app())
    assert codes(error.reasons) == ["runtime_version", "arch", "ram"]
    assert "digits 1.2.0 does not fit (3 problems)" in error.message
    for reason in error.reasons:
        assert str(reason) in error.message


def test_require_compatible_passes_a_fitting_device():
    require_compatible(MANIFEST, device(), app())


def test_a_reason_reads_as_one_line_naming_both_sides():
    (reason,) = check_compatibility(MANIFEST, device(), app(inputs=(spec(X, shape=("N", 32)),)))

    assert str(reason) == "contract.inputs[X].shape[1]: expected 64, actual 32 [input_shape]"


def test_device_supplied_text_cannot_break_the_line():
    (reason,) = check_compatibility(MANIFEST, device(tags={"camera": "v2", "site": "a\nb"}))

    assert "\n" not in str(reason)
    assert "a\\nb" in str(reason)


# Symbolic dimensions, both ways. Inputs: the model consumes. Outputs: the app consumes.


@pytest.mark.parametrize(
    ("manifest_shape", "app_shape", "fits"),
    [
        pytest.param(("N", 64), (1, 64), True, id="manifest-symbolic-takes-fixed"),
        pytest.param(("N", 64), ("B", 64), True, id="manifest-symbolic-takes-symbolic"),
        pytest.param(("?", 64), ("?", 64), True, id="question-mark-takes-question-mark"),
        pytest.param((8, 64), (8, 64), True, id="fixed-equal"),
        pytest.param((8, 64), ("N", 64), False, id="manifest-fixed-refuses-symbolic"),
        pytest.param((8, 64), (4, 64), False, id="fixed-differs"),
    ],
)
def test_symbolic_input_dimensions(manifest_shape, app_shape, fits):
    manifest = make_manifest(inputs=(spec(X, shape=manifest_shape),))

    reasons = check_compatibility(manifest, device(), app(inputs=(spec(X, shape=app_shape),), outputs=None))

    assert codes(reasons) == ([] if fits else ["input_shape"])


@pytest.mark.parametrize(
    ("fed", "read", "fits"),
    [
        pytest.param(("N", 64), ("B", 10), True, id="app-symbolic-reads-anything"),
        pytest.param((1, 64), (1, 10), True, id="batch-fixed-through-the-inputs"),
        pytest.param((4, 64), (1, 10), False, id="batch-fixed-to-another-size"),
        pytest.param(("N", 64), (1, 10), False, id="app-feeds-any-batch-but-reads-one"),
        pytest.param(("N", 64), ("N", 5), False, id="fixed-class-count-differs"),
    ],
)
def test_symbolic_output_dimensions(fed, read, fits):
    reasons = check_compatibility(
        MANIFEST,
        device(),
        app(inputs=(spec(X, shape=fed),), outputs=(spec(PROBABILITIES, shape=read),)),
    )

    assert codes(reasons) == ([] if fits else ["output_shape"])


def test_an_output_dimension_fixed_by_the_inputs_says_so():
    (reason,) = check_compatibility(
        MANIFEST, device(), app(inputs=(spec(X, shape=(4, 64)),), outputs=(spec(PROBABILITIES, shape=(1, 10)),))
    )

    assert (reason.expected, reason.actual) == ("1", "4 (N, fixed by the inputs)")


def test_a_symbol_fed_two_sizes_is_not_fixed():
    manifest = make_manifest(inputs=(X, MASK))
    fed = (spec(X, shape=(1, 64)), spec(MASK, shape=(2, 64)))

    reasons = check_compatibility(manifest, device(), app(inputs=fed, outputs=(spec(LABEL, shape=(1,)),)))

    assert codes(reasons) == ["output_shape"]
    assert reasons[0].actual == "N (any size)"


# Runtime versions.


@pytest.mark.parametrize(
    ("installed", "fits"),
    [
        pytest.param({"onnxruntime": "1.17.0"}, True, id="lowest"),
        pytest.param({"onnxruntime": "1.19.2+cuda12"}, True, id="local-version"),
        pytest.param({"onnxruntime": "1.18.0rc1"}, True, id="installed-prerelease"),
        pytest.param({"ONNXRuntime": "1.17.3"}, True, id="name-case"),
        pytest.param({"onnxruntime": "2.0.0rc1"}, False, id="prerelease-of-excluded"),
    ],
)
def test_runtime_versions(installed, fits):
    reasons = check_compatibility(MANIFEST, device(runtimes=installed))

    assert codes(reasons) == ([] if fits else ["runtime_version"])


def test_an_unparsable_runtime_version_is_reported_not_raised():
    reasons = check_compatibility(MANIFEST, device(runtimes={"onnxruntime": "banana"}))

    assert codes(reasons) == ["runtime_version"]
    assert "'banana', not a PEP 440 version" in reasons[0].actual


def test_an_empty_specifier_takes_any_installed_version():
    manifest = make_manifest(runtime=RuntimeRequirement(name="onnxruntime", specifier=""))

    assert check_compatibility(manifest, device(runtimes={"onnxruntime": "0.1"})) == ()


def test_a_missing_runtime_lists_what_is_installed():
    (reason,) = check_compatibility(MANIFEST, device(runtimes={"tflite": "2.14.0"}))

    assert reason.expected == "onnxruntime>=1.17,<2"
    assert reason.actual == "not installed (installed: tflite 2.14.0)"


# Hardware details.


@pytest.mark.parametrize("arch", ["aarch64", "arm64", "x86_64", "AMD64", "amd64"])
def test_architecture_spellings_of_one_instruction_set_fit(arch):
    assert check_compatibility(MANIFEST, device(arch=arch)) == ()


def test_a_payload_exactly_as_large_as_the_free_disk_fits():
    manifest = make_manifest(hardware=HARDWARE.model_copy(update={"min_disk_bytes": 0}))

    assert check_compatibility(manifest, device(disk_free_bytes=PAYLOAD_BYTES)) == ()


def test_a_float_bundle_runs_where_only_float_runs():
    manifest = make_manifest(quantization=Quantization(scheme="none"))

    assert check_compatibility(manifest, device(quantization=("none",))) == ()


# The declarations themselves.


def test_a_device_profile_refuses_unknown_fields_and_negative_sizes():
    with pytest.raises(ValidationError):
        DeviceProfile(**FIT_DEVICE, battery="low")
    with pytest.raises(ValidationError):
        device(ram_bytes=-1)


def test_a_device_profile_round_trips_through_json():
    profile = device()

    assert DeviceProfile.model_validate_json(profile.model_dump_json()) == profile


def test_an_app_contract_refuses_duplicate_tensor_names():
    with pytest.raises(ValidationError, match="unique"):
        app(inputs=(X, X))


# Properties.

SIZES = st.integers(min_value=1, max_value=4096)
DIMS = st.one_of(SIZES, st.sampled_from(["N", "batch", "?"]))


@settings(max_examples=60, deadline=None)
@given(manifest_shape=st.lists(DIMS, min_size=1, max_size=5), data=st.data())
def test_a_shape_equal_on_every_fixed_dimension_always_fits(manifest_shape, data):
    fed = [d if isinstance(d, int) else data.draw(st.one_of(SIZES, st.just("B"))) for d in manifest_shape]
    manifest = make_manifest(inputs=(spec(X, shape=tuple(manifest_shape)),))

    reasons = check_compatibility(manifest, device(), app(inputs=(spec(X, shape=tuple(fed)),), outputs=None))

    assert reasons == ()


@settings(max_examples=60, deadline=None)
@given(width=SIZES)
def test_a_wrong_fixed_width_is_one_shape_reason(width):
    reasons = check_compatibility(MANIFEST, device(), app(inputs=(spec(X, shape=("N", width)),)))

    assert codes(reasons) == ([] if width == 64 else ["input_shape"])


@settings(max_examples=60, deadline=None)
@given(ram=st.integers(0, 1 << 40), disk=st.integers(0, 1 << 40))
def test_memory_and_disk_fit_exactly_at_their_bounds(ram, disk):
    reasons = check_compatibility(MANIFEST, device(ram_bytes=ram, disk_free_bytes=disk))

    expected = [code for code, short in (("ram", ram < 256 * MIB), ("disk", disk < MIB)) if short]
    assert codes(reasons) == expected
