"""Ed25519 keys on disk, key ids, pinned key sets and k-of-n verification."""

from __future__ import annotations

import base64
import hashlib
import itertools
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.bundle import (
    SIGNING_CONTEXT,
    PublicKey,
    Signature,
    SignatureEnvelope,
    SigningKey,
    TrustedKeys,
    verify_signatures,
)
from modelfleet.config import BundleLimits
from modelfleet.errors import ConfigError, SignatureError

MANIFEST = b'{"name":"tiny-classifier","version":"1.2.0"}'


def _envelope(*signatures) -> bytes:
    return SignatureEnvelope.of(signatures).to_bytes()


@pytest.fixture(scope="module")
def three_keys() -> tuple[SigningKey, ...]:
    return tuple(SigningKey.generate() for _ in range(3))


@pytest.fixture(scope="module")
def two_of_three(three_keys) -> TrustedKeys:
    return TrustedKeys.of((key.public for key in three_keys), threshold=2)


# ------------------------------------------------------------------ key files


def test_saved_private_key_is_readable_by_its_owner_only(tmp_path):
    private, _ = SigningKey.generate().save(tmp_path, "release")

    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_saved_public_key_is_pem_of_the_same_key(tmp_path):
    key = SigningKey.generate()

    _, public = key.save(tmp_path, "release")

    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert PublicKey.from_file(public) == key.public


def test_saved_private_key_loads_and_signs_as_the_original(tmp_path):
    key = SigningKey.generate()
    private, _ = key.save(tmp_path, "release")

    loaded = SigningKey.from_file(private)

    assert loaded.public == key.public
    assert verify_signatures(MANIFEST, _envelope(loaded.sign(MANIFEST)), TrustedKeys.of([key.public])) == {
        key.public.keyid
    }


def test_saving_over_an_existing_key_is_refused(tmp_path):
    first = SigningKey.generate()
    private, public = first.save(tmp_path, "release")

    with pytest.raises(ConfigError) as refused:
        SigningKey.generate().save(tmp_path, "release")

    assert refused.value.code == "key_exists"
    assert (SigningKey.from_file(private).public, PublicKey.from_file(public)) == (first.public, first.public)


def test_saving_next_to_a_lone_public_key_writes_no_private_key(tmp_path):
    (tmp_path / "release.pub").write_bytes(SigningKey.generate().public.to_pem())

    with pytest.raises(ConfigError):
        SigningKey.generate().save(tmp_path, "release")

    assert not (tmp_path / "release.key").exists()


def _ec_private_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ec_public_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ed25519_private_pem() -> bytes:
    return SigningKey.generate()._private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


NOT_A_PUBLIC_KEY = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x8f\x00garbage\xff" * 10, id="binary_garbage"),
    pytest.param(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", id="truncated_pem"),
    pytest.param(_ec_public_pem(), id="ecdsa_public_key"),
    pytest.param(_ed25519_private_pem(), id="private_key_given_as_public"),
    pytest.param(b"MCowBQYDK2VwAyEA", id="no_pem_armour"),
    pytest.param(b"-----BEGIN PUBLIC KEY-----\nMC*w\n-----END PUBLIC KEY-----\n", id="broken_base64"),
    pytest.param(
        b"-----BEGIN PUBLIC KEY-----\n"
        + base64.b64encode(bytes.fromhex("302a300506032b6570032100") + bytes(31))
        + b"\n-----END PUBLIC KEY-----\n",
        id="ed25519_prefix_with_31_key_bytes",
    ),
]


@pytest.mark.parametrize("content", NOT_A_PUBLIC_KEY)
def test_public_key_file_that_is_not_an_ed25519_public_key_is_a_config_error(content, tmp_path):
    path = tmp_path / "trusted.pub"
    path.write_bytes(content)

    with pytest.raises(ConfigError) as refused:
        PublicKey.from_file(path)

    assert refused.value.code == "bad_key_file"
    assert str(path) in refused.value.message


def test_missing_public_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read public key"):
        PublicKey.from_file(tmp_path / "absent.pub")


NOT_A_SIGNING_KEY = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x8f\x00garbage\xff" * 10, id="binary_garbage"),
    pytest.param(_ec_private_pem(), id="ecdsa_private_key"),
    pytest.param(_ec_public_pem(), id="public_key_given_as_private"),
]


@pytest.mark.parametrize("content", NOT_A_SIGNING_KEY)
def test_signing_key_file_that_is_not_an_ed25519_private_key_is_a_config_error(content, tmp_path):
    path = tmp_path / "release.key"
    path.write_bytes(content)

    with pytest.raises(ConfigError) as refused:
        SigningKey.from_file(path)

    assert refused.value.code == "bad_key_file"


# ------------------------------------------------------------------ key ids


def test_keyid_is_the_sha256_of_the_raw_public_key():
    key = SigningKey.generate()
    raw = key._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    assert key.public.keyid == hashlib.sha256(raw).hexdigest()


def test_keyid_survives_a_pem_round_trip():
    key = SigningKey.generate()

    assert PublicKey.from_pem(key.public.to_pem()).keyid == key.public.keyid


def test_pem_encoding_is_the_one_cryptography_writes_and_reads():
    key = SigningKey.generate()
    spki = key._private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    assert key.public.to_pem() == spki
    assert (
        serialization.load_pem_public_key(key.public.to_pem()).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        == key.public.raw
    )


def test_public_key_of_the_wrong_length_is_a_programming_error():
    with pytest.raises(ValueError, match="32 bytes"):
        PublicKey(b"\x01" * 31)


# ------------------------------------------------------------------ pinned key sets


@pytest.mark.parametrize(
    ("n_keys", "threshold"),
    [
        pytest.param(2, 0, id="zero"),
        pytest.param(2, -1, id="negative"),
        pytest.param(2, 3, id="more_than_keys"),
        pytest.param(0, 1, id="no_keys"),
    ],
)
def test_threshold_outside_one_to_n_is_a_config_error(n_keys, threshold, three_keys):
    with pytest.raises(ConfigError) as refused:
        TrustedKeys.of((key.public for key in three_keys[:n_keys]), threshold)

    assert refused.value.code == "bad_threshold"


@pytest.mark.parametrize("threshold", [1, 3])
def test_threshold_at_the_bounds_is_accepted(threshold, three_keys):
    assert TrustedKeys.of((key.public for key in three_keys), threshold).threshold == threshold


def test_pinning_one_key_twice_does_not_make_two_keys(three_keys):
    key = three_keys[0].public

    with pytest.raises(ConfigError):
        TrustedKeys.of([key, key], threshold=2)


# ------------------------------------------------------------------ k-of-n


@pytest.mark.parametrize("signers", list(itertools.combinations(range(3), 2)), ids=lambda s: f"keys{s[0]}+{s[1]}")
def test_any_two_of_three_trusted_keys_are_enough(signers, three_keys, two_of_three):
    keys = [three_keys[i] for i in signers]

    signed_by = verify_signatures(MANIFEST, _envelope(*(k.sign(MANIFEST) for k in keys)), two_of_three)

    assert signed_by == {k.public.keyid for k in keys}


@pytest.mark.parametrize("signer", range(3))
def test_one_of_three_is_below_a_threshold_of_two(signer, three_keys, two_of_three):
    with pytest.raises(SignatureError) as refused:
        verify_signatures(MANIFEST, _envelope(three_keys[signer].sign(MANIFEST)), two_of_three)

    assert refused.value.code == "below_threshold"


def test_signatures_by_unknown_keys_are_ignored_once_the_threshold_is_met(three_keys, two_of_three):
    stranger = SigningKey.generate()
    envelope = _envelope(*(k.sign(MANIFEST) for k in (stranger, three_keys[0], three_keys[1])))

    assert verify_signatures(MANIFEST, envelope, two_of_three) == {k.public.keyid for k in three_keys[:2]}


def test_a_bad_signature_by_a_trusted_key_does_not_count(three_keys, two_of_three):
    forged = three_keys[2].sign(b"another manifest")
    envelope = _envelope(three_keys[0].sign(MANIFEST), three_keys[1].sign(MANIFEST), forged)

    assert verify_signatures(MANIFEST, envelope, two_of_three) == {k.public.keyid for k in three_keys[:2]}


def test_envelope_over_the_signature_limit_is_refused(three_keys, two_of_three):
    envelope = _envelope(*(k.sign(MANIFEST) for k in three_keys))

    with pytest.raises(SignatureError) as refused:
        verify_signatures(MANIFEST, envelope, two_of_three, BundleLimits(max_signatures=2))

    assert refused.value.code == "too_many_signatures"


# ------------------------------------------------------------------ what a signature covers


def _raw_signature(key: SigningKey, message: bytes) -> Signature:
    """A signature over ``message`` exactly, bypassing ``SigningKey.sign``'s context prefix."""
    raw = key._private.sign(message)
    return Signature(keyid=key.public.keyid, alg="ed25519", sig=base64.b64encode(raw).decode("ascii"))


SIGNED_ELSEWHERE = [
    pytest.param(MANIFEST, id="same_bytes_without_the_bundle_context"),
    pytest.param(b"modelfleet/device-assignment/v1\x00" + MANIFEST, id="same_bytes_in_another_context"),
    pytest.param(SIGNING_CONTEXT + MANIFEST.replace(b"1.2.0", b"1.2.1"), id="another_manifest"),
]


@pytest.mark.parametrize("message", SIGNED_ELSEWHERE)
def test_signature_made_for_another_message_does_not_verify(message):
    key = SigningKey.generate()
    trusted = TrustedKeys.of([key.public])

    with pytest.raises(SignatureError) as refused:
        verify_signatures(MANIFEST, _envelope(_raw_signature(key, message)), trusted)

    assert refused.value.code == "bad_signature"


def test_signature_over_the_context_and_manifest_verifies():
    key = SigningKey.generate()

    signature = _raw_signature(key, SIGNING_CONTEXT + MANIFEST)

    assert verify_signatures(MANIFEST, _envelope(signature), TrustedKeys.of([key.public])) == {key.public.keyid}
