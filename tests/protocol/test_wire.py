"""Enrollment proofs bind the device id, key, time and token; wire models forbid surprises."""

import base64
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelfleet.bundle import DeviceProfile, SigningKey
from modelfleet.protocol import MAX_BATCH, EnrollRequest, TelemetryBatch, enrollment_message

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROFILE = DeviceProfile(arch="aarch64", ram_bytes=2**31, disk_free_bytes=2**33)


def request(key: SigningKey, **changes):
    fields = {
        "device_id": "pi-0042",
        "public_key": base64.b64encode(key.public.raw).decode(),
        "issued_at": NOW,
        "enroll_token": "mfe_secret",
        "inventory": PROFILE,
        "proof": "",
    }
    fields.update(changes)
    return EnrollRequest(**fields)


def test_the_message_a_device_signs_changes_with_every_bound_field():
    key = SigningKey.generate()
    base = enrollment_message(request(key))
    assert base.startswith(b"modelfleet/enroll/v1\x00")
    for changes in ({"device_id": "pi-0043"}, {"enroll_token": None}, {"issued_at": NOW.replace(minute=1)}):
        assert enrollment_message(request(key, **changes)) != base
    other = SigningKey.generate()
    assert enrollment_message(request(other)) != base


@pytest.mark.parametrize(
    "changes",
    [
        {"public_key": base64.b64encode(b"short").decode()},
        {"public_key": "not base64!"},
        {"device_id": "../etc"},
        {"device_id": "x"},
    ],
    ids=["key-not-32-bytes", "key-not-base64", "device-id-path", "device-id-too-short"],
)
def test_bad_enrollment_fields_are_refused(changes):
    with pytest.raises(ValidationError):
        request(SigningKey.generate(), **changes)


def test_batches_are_bounded():
    assert TelemetryBatch(summaries=()).summaries == ()
    with pytest.raises(ValidationError, match="at most 500 items per batch") as caught:
        TelemetryBatch.model_validate({"summaries": [{}] * (MAX_BATCH + 1)})
    assert caught.value.error_count() == 1  # refused before 501 items were validated
