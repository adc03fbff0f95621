"""``modelfleet demo``: the bundle walk-through.

Until the fleet simulator lands (issue 7) the demo shows the part of modelfleet
that exists: train a real classifier, build and sign float and INT8 bundles,
inspect and verify them, check them against two devices, then tamper with a
bundle in several ways and watch each copy be refused for its own reason.
Every number printed is computed by this run.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer
from rich.rule import Rule
from rich.table import Table

from modelfleet.bundle import (
    AppContract,
    BuildOptions,
    DeviceProfile,
    Manifest,
    PreprocessingRef,
    SignatureEnvelope,
    SigningKey,
    TensorSpec,
    TrustedKeys,
    build_bundle,
    check_compatibility,
    load_validation_set,
    read_bundle,
    read_header,
    write_bundle,
)
from modelfleet.cli._console import out
from modelfleet.cli._render import human_bytes, render_header
from modelfleet.errors import BundleError
from modelfleet.sim.models import digits_mlp

__all__ = ["demo"]

_BLOCK = 512
_MB = 1024 * 1024


def _step(title: str) -> None:
    out.print()
    out.print(Rule(f"[bold]{title}", align="left"))


def _padded(size: int) -> int:
    return size + (-size % _BLOCK)


def _member_offset(bundle: Path, member: str) -> int:
    """Byte offset of ``member``'s data inside a bundle written by modelfleet."""
    header = read_header(bundle)
    offset = 3 * _BLOCK + _padded(len(header.manifest_bytes)) + _padded(len(header.signature_bytes))
    for entry in header.manifest.files:
        if entry.path == member:
            return offset
        offset += _padded(entry.size) + _BLOCK
    msg = f"{member} not in {bundle}"
    raise KeyError(msg)


def _flip_model_byte(good: Path, bad: Path, _keys: list[SigningKey]) -> None:
    data = bytearray(good.read_bytes())
    data[_member_offset(good, "model.onnx") + 100] ^= 0x01
    bad.write_bytes(bytes(data))


def _append_bytes(good: Path, bad: Path, _keys: list[SigningKey]) -> None:
    bad.write_bytes(good.read_bytes() + b"#!/bin/sh\necho owned\n")


def _truncate(good: Path, bad: Path, _keys: list[SigningKey]) -> None:
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])


def _resign(good: Path, bad: Path, signers: list[SigningKey], trusted: TrustedKeys) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        verified = read_bundle(good, trusted, extract_to=Path(scratch) / "files")
        envelope = SignatureEnvelope.of(key.sign(verified.manifest_bytes) for key in signers)
        write_bundle(bad, verified.manifest, envelope, verified.files)


def _tampers(trusted: TrustedKeys) -> list[tuple[str, Callable[[Path, Path, list[SigningKey]], None]]]:
    def untrusted_signer(good: Path, bad: Path, _keys: list[SigningKey]) -> None:
        _resign(good, bad, [SigningKey.generate()], trusted)

    def one_signature(good: Path, bad: Path, keys: list[SigningKey]) -> None:
        _resign(good, bad, keys[:1], trusted)

    def same_key_twice(good: Path, bad: Path, keys: list[SigningKey]) -> None:
        _resign(good, bad, [keys[0], keys[0]], trusted)

    return [
        ("one bit flipped inside model.onnx", _flip_model_byte),
        ("a shell script appended after the archive", _append_bytes),
        ("download cut off half-way", _truncate),
        ("re-signed by a key nobody pinned", untrusted_signer),
        ("signed by one key; devices need two", one_signature),
        ("one key signing twice to fake a quorum", same_key_twice),
    ]


def _train(workdir: Path) -> tuple[Path, Path, tuple[str, ...]]:
    case = digits_mlp(workdir / "digits.onnx", seed=0)
    validation = workdir / "validation.npz"
    if case.y_val is None:
        msg = "the digits model case always carries labels"
        raise RuntimeError(msg)
    np.savez(validation, x=case.x_val, y=case.y_val)
    out.print(
        f"trained an MLP on scikit-learn's handwritten digits: {case.x_val.shape[1]} pixel features, "
        f"{len(case.labels)} classes, exported to {case.path.name} ({human_bytes(case.path.stat().st_size)}); "
        f"{len(case.x_val)} held-out rows for evidence"
    )
    return case.path, validation, case.labels


def _keys(workdir: Path) -> tuple[list[SigningKey], TrustedKeys]:
    keys = [SigningKey.generate() for _ in range(3)]
    for index, key in enumerate(keys, start=1):
        key.save(workdir / "keys", f"release-{index}")
    trusted = TrustedKeys.of((key.public for key in keys), threshold=2)
    out.print(
        f"made 3 Ed25519 keys in {workdir / 'keys'}; devices pin all 3 and need 2 signatures (2-of-3), "
        "so one lost or stolen key can neither block nor forge a release"
    )
    return keys, trusted


def _build(model: Path, validation: Path, labels: tuple[str, ...], keys: list[SigningKey], workdir: Path) -> Path:
    val = load_validation_set(validation)
    float_path, int8_path = workdir / "digits-1.0.0.mfb", workdir / "digits-1.1.0.mfb"
    base = BuildOptions(
        name="digits",
        version="1.0.0",
        release=1,
        labels=labels,
        max_latency_ms=20.0,
        max_ram_bytes=64 * _MB,
        dataset="sklearn-digits",
    )
    v1 = build_bundle(model, val, keys[:2], float_path, base)
    int8 = dataclasses.replace(base, version="1.1.0", release=2, parent="1.0.0", quantize="int8")
    v2 = build_bundle(model, val, keys[:2], int8_path, int8)
    for manifest, path in ((v1, float_path), (v2, int8_path)):
        accuracy = manifest.evidence.metrics.get("accuracy", float("nan"))
        parity = manifest.evidence.parity
        extra = f", top-1 agreement with float {parity.agreement:.4f} (>= {parity.min_required:g})" if parity else ""
        out.print(
            f"built {path.name}: {human_bytes(path.stat().st_size)}, {manifest.contract.quantization.scheme}, "
            f"validation accuracy {accuracy:.4f}{extra}"
        )
    return int8_path


def _verify(bundle: Path, trusted: TrustedKeys) -> Manifest:
    verified = read_bundle(bundle, trusted)
    out.print(
        f"[green]OK[/] {bundle.name}: layout, {len(verified.manifest.files)} payload hashes and "
        f"{len(verified.signed_by)} of {trusted.threshold} required signatures verified"
    )
    return verified.manifest


def _compatibility(manifest: Manifest) -> None:
    features = manifest.contract.inputs[0]
    app = AppContract(inputs=(features,), preprocessing=None)
    fits = DeviceProfile(
        arch="aarch64", runtimes={"onnxruntime": "1.20.1"}, ram_bytes=4 * 1024 * _MB, disk_free_bytes=8 * 1024 * _MB
    )
    old = DeviceProfile(
        arch="armv7l",
        runtimes={"onnxruntime": "1.10.0"},
        ram_bytes=512 * _MB,
        disk_free_bytes=8 * 1024,
        quantization=("none",),
    )
    wrong_app = AppContract(
        inputs=(TensorSpec(name=features.name, dtype="float32", shape=("N", 63)),),
        preprocessing=PreprocessingRef(id="digits-8x8", version=2),
    )
    for label, device, contract in (("gateway, Pi 4", fits, app), ("old ARMv7 box", old, wrong_app)):
        reasons = check_compatibility(manifest, device, contract)
        verdict = "[green]fits[/]" if not reasons else f"[red]refused, {len(reasons)} reason(s)[/]"
        out.print(f"{label}: {verdict}")
        for reason in reasons:
            out.print(f"    - {reason}")


def _tamper_gallery(good: Path, keys: list[SigningKey], trusted: TrustedKeys, workdir: Path) -> int:
    table = Table("tampering", "verdict", "code", "reason", title_justify="left")
    refused = 0
    for index, (label, make) in enumerate(_tampers(trusted)):
        bad = workdir / f"tampered-{index}.mfb"
        make(good, bad, keys)
        try:
            read_bundle(bad, trusted, extract_to=workdir / f"tampered-{index}")
        except BundleError as error:
            refused += 1
            table.add_row(label, "[red]REFUSED", error.code, error.message)
        else:
            table.add_row(label, "[bold red]ACCEPTED", "-", "-")
        leftovers = list(workdir.glob(f".tampered-{index}*")) + list(workdir.glob(f"tampered-{index}/"))
        if leftovers:
            table.add_row("", "[bold red]left files behind", "-", ", ".join(p.name for p in leftovers))
    out.print(table)
    return refused


def demo(
    workdir: Path = typer.Option(Path("modelfleet-demo"), "--workdir", help="Where keys and bundles are written."),
) -> None:
    """Walk through the signed bundle: train, build, sign, inspect, verify, check fit, tamper, refuse."""
    out.print(
        "[bold]modelfleet demo: the bundle walk-through.[/] The fleet demo (simulated devices, a staged rollout "
        "caught by label-free gates and rolled back) arrives with the simulator; this shows the signed bundle "
        "it will ship."
    )
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    _step("1. train a real classifier")
    model, validation, labels = _train(workdir)
    _step("2. keys")
    keys, trusted = _keys(workdir)
    _step("3. build and sign: float v1.0.0 and INT8 v1.1.0")
    int8_bundle = _build(model, validation, labels, keys, workdir)
    _step("4. inspect the INT8 bundle")
    out.print(render_header(read_header(int8_bundle), max_features=8))
    _step("5. verify, as a device would")
    manifest = _verify(int8_bundle, trusted)
    _step("6. does it fit? (checked on the device before download and before activation)")
    _compatibility(manifest)
    _step("7. tamper with it")
    tampers = len(_tampers(trusted))
    refused = _tamper_gallery(int8_bundle, keys, trusted, workdir)
    out.print()
    out.print(f"{refused} of {tampers} tampered copies refused; files are in {workdir.resolve()}")
    if refused != tampers:
        raise typer.Exit(1)
