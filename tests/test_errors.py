"""The exception tree keeps bad data, transport failures and build refusals apart."""

import pytest

from modelfleet import errors

BAD_DATA = [
    errors.BundleFormatError,
    errors.ManifestError,
    errors.HashMismatchError,
    errors.SignatureError,
    errors.IncompatibleError,
    errors.DeltaError,
]


@pytest.mark.parametrize("cls", BAD_DATA)
def test_every_refusal_of_outside_data_is_bad_data_and_not_transport(cls):
    error = cls("boom")
    assert isinstance(error, errors.BadDataError)
    assert not isinstance(error, errors.TransportError)


@pytest.mark.parametrize("cls", [errors.ValidationSetError, errors.ParityError])
def test_build_refusals_are_build_errors_not_bad_remote_data(cls):
    assert issubclass(cls, errors.BuildError)
    assert not issubclass(cls, errors.BadDataError)


def test_code_defaults_per_class_and_can_be_overridden():
    assert errors.SignatureError("x").code == "signature"
    assert errors.SignatureError("x", code="below_threshold").code == "below_threshold"
    assert str(errors.ConfigError("settings are wrong")) == "settings are wrong"


def test_incompatible_error_keeps_every_reason():
    error = errors.IncompatibleError("two problems", reasons=("arch", "ram"))
    assert error.reasons == ("arch", "ram")


def test_docstring_draws_every_class_in_the_tree():
    classes = [name for name in errors.__all__ if name != "ModelfleetError"]
    assert errors.__doc__ is not None
    undrawn = [name for name in classes if name not in errors.__doc__]
    assert undrawn == []
