"""Enrollment proofs bind the device id, key, time and token; wire models forbid surprises."""

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from modelfleet.bundle import DeviceProfile, SigningKey
from modelfleet.protocol import (
    MAX_BATCH,
    MAX_DELTA_FORMATS,
    UNREPORTED_DELTA_FORMATS,
    Artifact,
    DesiredModel,
    EnrollRequest,
    InstalledModel,
    TelemetryBatch,
    TimeSlice,
    enrollment_message,
)

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


SLICE = {"slot_seconds": 60, "order": [0, 1]}
ARTIFACT = {"url": "http://127.0.0.1/v1/artifacts/x", "sha256": "0" * 64, "size": 10}
OLD_ANSWER = (
    '{"model":"digits","version":"1.0.0","release":1,"mode":"active","rollback":false,"rollout_id":null,'
    '"experiment_id":null,"artifact":{"url":"http://127.0.0.1/v1/artifacts/x","sha256":"'
    + "0" * 64
    + '","size":10},"delta":null}'
)


def test_an_answer_without_a_candidate_is_the_bytes_it_was_before_the_field():
    desired = DesiredModel(model="digits", version="1.0.0", release=1, artifact=Artifact(**ARTIFACT))
    assert desired.model_dump_json() == OLD_ANSWER
    assert DesiredModel.model_validate_json(OLD_ANSWER) == desired
    assert "modes" not in InstalledModel(model="digits").model_dump(mode="json")


OLD_REPORT = '{"model":"digits","version":"1.0.0","release":1,"state":"committed","previous_version":null}'


def test_an_agent_that_reads_delta_format_1_only_reports_the_bytes_agents_sent_before_the_field():
    report = InstalledModel(model="digits", version="1.0.0", release=1, state="committed", delta_formats=(1,))
    assert report.model_dump_json() == OLD_REPORT
    assert InstalledModel.model_validate_json(OLD_REPORT).delta_formats == UNREPORTED_DELTA_FORMATS == (1,)
    newer = report.model_copy(update={"delta_formats": (1, 2)})
    assert json.loads(newer.model_dump_json())["delta_formats"] == [1, 2]


# delta_formats as sent -> what the refusal says
BAD_DELTA_FORMATS = {
    "zero": ([0], "greater than or equal to 1"),
    "past the header's byte": ([256], "less than or equal to 255"),
    "a string": (["1"], "valid integer"),
    "a float": ([2.0], "valid integer"),
    "a boolean": ([True], "valid integer"),
    "repeated": ([2, 2], "each version at most once"),
    "too many": (list(range(1, MAX_DELTA_FORMATS + 2)), f"at most {MAX_DELTA_FORMATS} delta format versions"),
    "not a list": ("1,2", "valid array"),
}


@pytest.mark.parametrize("case", BAD_DELTA_FORMATS)
def test_reported_delta_formats_are_bounded_positive_and_distinct(case):
    value, says = BAD_DELTA_FORMATS[case]
    with pytest.raises(ValidationError, match=says) as caught:
        InstalledModel.model_validate_json(json.dumps({"model": "digits", "delta_formats": value}))
    assert caught.value.error_count() == 1


def test_an_oversized_format_list_is_refused_before_its_items_are_validated():
    with pytest.raises(ValidationError) as caught:
        InstalledModel.model_validate({"model": "digits", "delta_formats": ["x"] * 100_000})
    assert caught.value.error_count() == 1


@pytest.mark.parametrize(
    ("mode", "candidate", "problem"),
    [
        ("shadow", None, "needs a candidate"),
        ("active", {"version": "2.0.0", "release": 2, "artifact": ARTIFACT}, "takes no candidate"),
        ("time_slice", {"version": "2.0.0", "release": 2, "artifact": ARTIFACT}, "time_slice schedule"),
        (
            "shadow",
            {
                "version": "2.0.0",
                "release": 2,
                "artifact": ARTIFACT,
                "time_slice": {"slot_seconds": 60, "order": [0, 1]},
            },
            "time_slice schedule",
        ),
    ],
)
def test_a_mode_and_its_candidate_come_together(mode, candidate, problem):
    body = {"model": "digits", "version": "1.0.0", "release": 1, "mode": mode, "artifact": ARTIFACT}
    with pytest.raises(ValidationError, match=problem):
        DesiredModel.model_validate({**body, "candidate": candidate})


def test_a_time_slice_runs_abba_blocks_from_the_epoch():
    schedule = TimeSlice(slot_seconds=60, order=(1, 0))
    start = datetime(2026, 12, 7, tzinfo=UTC)
    assert [schedule.version_at(start + timedelta(seconds=60 * k + 59)) for k in range(8)] == [1, 0, 0, 1] * 2
    with pytest.raises(ValidationError, match="order"):
        TimeSlice(slot_seconds=60, order=(1, 1))
