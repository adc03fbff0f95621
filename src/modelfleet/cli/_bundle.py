"""``modelfleet bundle``: build, inspect and verify signed model bundles; diff and patch them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from modelfleet.bundle import (
    BuildOptions,
    Calibration,
    HardwareTargets,
    Manifest,
    PublicKey,
    SigningKey,
    TrustedKeys,
    build_bundle,
    load_validation_set,
    read_bundle,
    read_header,
)
from modelfleet.cli._console import EXIT_REFUSED, err, out, progress_bar
from modelfleet.cli._render import human_bytes, render_header
from modelfleet.errors import BundleError, ConfigError

__all__ = ["bundle_app"]

bundle_app = typer.Typer(help="Build, inspect and verify signed model bundles (.mfb).", no_args_is_help=True)

_MB = 1024 * 1024


def _read_json(path: Path | None, what: str) -> object:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read {what} file {path}: {exc.strerror}"
        raise ConfigError(msg, code="bad_input_file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{what} file {path} is not JSON: {exc}"
        raise ConfigError(msg, code="bad_input_file") from None


def _thresholds(path: Path | None) -> dict[str, float]:
    data = _read_json(path, "thresholds")
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data.values()
    ):
        msg = f'thresholds file {path} must be a JSON object of numbers, e.g. {{"reject_below": 0.6}}'
        raise ConfigError(msg, code="bad_input_file")
    return {str(k): float(v) for k, v in data.items()}


def _calibration(path: Path | None) -> Calibration | None:
    data = _read_json(path, "calibration")
    if data is None:
        return None
    try:
        return Calibration.model_validate(data, strict=False)
    except ValueError as exc:
        msg = f'calibration file {path} must look like {{"method": "temperature", "params": {{...}}}}: {exc}'
        raise ConfigError(msg, code="bad_input_file") from None


def _labels(path: Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        msg = f"cannot read labels file {path}: {exc.strerror}"
        raise ConfigError(msg, code="bad_input_file") from None
    return tuple(line.strip() for line in lines if line.strip())


def _tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"tag {pair!r} must look like key=value"
            raise ConfigError(msg, code="bad_option")
        tags[key] = value
    return tags


@bundle_app.command("build")
def build(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="The model (ONNX)."),
    name: str = typer.Option(..., "--name", help="Model name, e.g. 'vibration-classifier'."),
    version: str = typer.Option(..., "--version", help="Semantic version of this bundle."),
    release: int = typer.Option(..., "--release", help="Monotonic release number (anti-rollback)."),
    validation: Path = typer.Option(..., "--validation", exists=True, dir_okay=False, help="VAL.npz with x (and y)."),
    keys: list[Path] = typer.Option(..., "--key", exists=True, dir_okay=False, help="Signing key; repeat for k-of-n."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the .mfb."),
    quantize: str = typer.Option("none", "--quantize", help="'none' or 'int8' (ONNX Runtime static QDQ)."),
    per_channel: bool = typer.Option(False, "--per-channel", help="Per-channel INT8 weight scales."),
    min_parity: float = typer.Option(0.98, "--min-parity", help="Refuse INT8 below this top-1 agreement."),
    thresholds: Path | None = typer.Option(None, "--thresholds", exists=True, help="JSON object of thresholds."),
    calibration: Path | None = typer.Option(None, "--calibration", exists=True, help="JSON: method and params."),
    preprocess: Path | None = typer.Option(None, "--preprocess", exists=True, help="JSON with id and version."),
    labels: Path | None = typer.Option(None, "--labels", exists=True, help="Class labels, one per line."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="Latency budget per inference."),
    max_ram_mb: float | None = typer.Option(None, "--max-ram-mb", help="Peak RAM budget."),
    parent: str | None = typer.Option(
        None, "--parent", help="Version this one replaces, or its .mfb: then its INT8 scales are kept where they fit."
    ),
    parent_max_clip: float = typer.Option(
        0.01, "--parent-max-clip", help="Keep a parent scale if the weights' range grew at most this much."
    ),
    parent_max_coarsening: float = typer.Option(
        0.05, "--parent-max-coarsening", help="Keep a parent scale up to this much coarser than a fresh one."
    ),
    runtime: str | None = typer.Option(None, "--runtime", help="onnxruntime version specifier, e.g. '>=1.17'."),
    arch: list[str] = typer.Option([], "--arch", help="Allowed CPU architecture; repeat."),
    device_type: list[str] = typer.Option([], "--device-type", help="Allowed device type; repeat."),
    require_tag: list[str] = typer.Option([], "--require-tag", help="Required device tag key=value; repeat."),
    min_ram_mb: int = typer.Option(0, "--min-ram-mb", help="Minimum device RAM."),
    min_disk_mb: int = typer.Option(0, "--min-disk-mb", help="Minimum free disk on the device."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="Required accelerator, e.g. 'cuda'."),
    fallback_class: int | None = typer.Option(None, "--fallback-class", help="Answer when inference fails."),
    golden_count: int = typer.Option(16, "--golden-count", help="Golden test vectors to store."),
    dataset: str | None = typer.Option(None, "--dataset", help="Provenance: dataset name."),
    dataset_version: str | None = typer.Option(None, "--dataset-version", help="Provenance: dataset version."),
    training_config_hash: str | None = typer.Option(None, "--training-config-hash", help="Provenance."),
    code_commit: str | None = typer.Option(None, "--code-commit", help="Provenance: training code commit."),
    builder: str | None = typer.Option(None, "--builder", help="Provenance: who or what built it."),
    show_progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on long steps."),
) -> None:
    """Build and sign a bundle: contract from the model, evidence from the validation set."""
    if quantize not in ("none", "int8"):
        msg = f"--quantize must be 'none' or 'int8', got {quantize!r}"
        raise ConfigError(msg, code="bad_option")
    scheme: Literal["none", "int8"] = "int8" if quantize == "int8" else "none"
    options = BuildOptions(
        name=name,
        version=version,
        release=release,
        parent=None if _is_bundle(parent) else parent,
        parent_bundle=Path(parent) if parent is not None and _is_bundle(parent) else None,
        parent_max_clip=parent_max_clip,
        parent_max_coarsening=parent_max_coarsening,
        quantize=scheme,
        per_channel=per_channel,
        min_parity=min_parity,
        thresholds=_thresholds(thresholds),
        calibration=_calibration(calibration),
        preprocess=preprocess,
        labels=_labels(labels),
        max_latency_ms=max_latency_ms,
        max_ram_bytes=round(max_ram_mb * _MB) if max_ram_mb is not None else None,
        runtime_specifier=runtime,
        hardware=HardwareTargets(
            arch=tuple(arch),
            device_types=tuple(device_type),
            required_tags=_tags(require_tag),
            min_ram_bytes=min_ram_mb * _MB,
            min_disk_bytes=min_disk_mb * _MB,
            accelerator=accelerator,
        ),
        fallback_class=fallback_class,
        golden_count=golden_count,
        dataset=dataset,
        dataset_version=dataset_version,
        training_config_hash=training_config_hash,
        code_commit=code_commit,
        builder=builder,
    )
    signing_keys = [SigningKey.from_file(path) for path in keys]
    validation_set = load_validation_set(validation)
    with progress_bar(show_progress) as progress:
        manifest = build_bundle(model, validation_set, signing_keys, output, options, progress=progress)
    size = output.stat().st_size
    parity = f", INT8 parity {manifest.evidence.parity.agreement:.4f}" if manifest.evidence.parity else ""
    accuracy = manifest.evidence.metrics.get("accuracy")
    quality = f", validation accuracy {accuracy:.4f}" if accuracy is not None else ""
    out.print(
        f"built {output} ({human_bytes(size)}): {manifest.name} {manifest.version} release {manifest.release}"
        f"{quality}{parity}, signed by {len(signing_keys)} key(s)"
    )
    for line in _reuse_lines(manifest):
        out.print(line)


def _is_bundle(parent: str | None) -> bool:
    """``--parent`` names a bundle file (else a version): an existing file, or anything ending in ``.mfb``."""
    return parent is not None and (parent.endswith(".mfb") or Path(parent).is_file())


def _reuse_lines(manifest: Manifest) -> list[str]:
    """Per INT8 weight, what a ``--parent`` build kept of the parent's scales and zero points."""
    weights = [t for t in manifest.contract.quantization.tensors if t.reused is not None]
    if not weights:
        return []
    kept = sum(1 for t in weights if t.reused == len(t.scale))
    lines = [f"INT8 scales from parent {manifest.parent}: {kept} of {len(weights)} weights kept unchanged"]
    for tensor in weights:
        pairs = len(tensor.scale)
        if tensor.reused == pairs:
            what = "kept the parent's scale" + ("s" if pairs > 1 else "")
        elif tensor.reused:
            what = f"kept the parent's scales in {tensor.reused} of {pairs} channels, re-quantized the rest"
        else:
            what = "re-quantized: the new weights do not fit the parent's scale (or it has no such weight)"
        lines.append(f"  {tensor.name}: {what}")
    return lines


@bundle_app.command("inspect")
def inspect(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="The .mfb to read."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and signatures as JSON."),
    all_features: bool = typer.Option(False, "--all-features", help="Draw every feature's reference histogram."),
) -> None:
    """Show what a bundle holds: contract, budgets, metrics, reference histograms (signatures not checked)."""
    header = read_header(bundle)
    if as_json:
        document = {
            "manifest": json.loads(header.manifest_bytes),
            "signatures": [{"keyid": s.keyid, "alg": s.alg} for s in header.envelope.signatures],
            "verified": False,
        }
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    out.print(render_header(header, max_features=None if all_features else 12))


@bundle_app.command("verify")
def verify(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="The .mfb to check."),
    trust: list[Path] = typer.Option(..., "--trust", exists=True, dir_okay=False, help="Trusted public key; repeat."),
    threshold: int = typer.Option(1, "--threshold", help="How many distinct trusted keys must have signed."),
) -> None:
    """Check layout, signatures (k of n) and every payload hash; exit 0 only if all hold."""
    trusted = TrustedKeys.of((PublicKey.from_file(path) for path in trust), threshold)
    try:
        verified = read_bundle(bundle, trusted)
    except BundleError as error:
        err.print(f"[bold red]REFUSED[/] {bundle}: {error.message} [dim]\\[{error.code}][/]")
        raise typer.Exit(EXIT_REFUSED) from None
    m = verified.manifest
    signers = ", ".join(sorted(k[:16] for k in verified.signed_by))
    out.print(
        f"[bold green]OK[/] {bundle}: {m.name} {m.version} (release {m.release}), {len(m.files)} files "
        f"{human_bytes(m.payload_bytes)}, signed by {len(verified.signed_by)} of {len(trusted.keys)} trusted keys "
        f"(threshold {trusted.threshold}): {signers}"
    )


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.partial")
    try:
        temp.write_bytes(data)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@bundle_app.command("diff")
def diff(
    old: Path = typer.Argument(..., exists=True, dir_okay=False, help="The bundle devices run (.mfb)."),
    new: Path = typer.Argument(..., exists=True, dir_okay=False, help="The bundle to send them (.mfb)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the delta (.mfd)."),
) -> None:
    """Encode the smallest delta from OLD to NEW (tensor-aware for ONNX, else zstd or bsdiff4)."""
    from modelfleet.bundle.delta import encode  # noqa: PLC0415 - numpy/zstd load only for this command

    delta = encode(old, new)
    _write_atomically(output, delta.data)
    full = delta.header.target_size
    candidates = ", ".join(f"{codec} {human_bytes(size)}" for codec, size in sorted(delta.sizes.items()))
    out.print(
        f"wrote {output}: full {human_bytes(full)}, delta {human_bytes(len(delta.data))} "
        f"(ratio {len(delta.data) / max(full, 1):.3f}), codec {delta.codec}, {delta.seconds:.2f} s; "
        f"candidates: {candidates}"
    )


@bundle_app.command("patch")
def patch(
    old: Path = typer.Argument(..., exists=True, dir_okay=False, help="The installed bundle the delta was made from."),
    delta: Path = typer.Argument(..., exists=True, dir_okay=False, help="The delta (.mfd)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the rebuilt bundle (.mfb)."),
) -> None:
    """Rebuild NEW from OLD and a delta; the result must hash to the delta's target or nothing is written."""
    from modelfleet.bundle.delta import apply  # noqa: PLC0415 - numpy/zstd load only for this command
    from modelfleet.errors import DeltaError  # noqa: PLC0415

    try:
        header = apply(old, delta, output)
    except DeltaError as error:
        err.print(f"[bold red]REFUSED[/] {delta}: {error.message} [dim]\\[{error.code}][/]")
        raise typer.Exit(EXIT_REFUSED) from None
    out.print(
        f"[bold green]OK[/] {output}: {human_bytes(header.target_size)}, sha256 {header.target_sha256[:16]}… "
        f"rebuilt from {old} with a {header.codec} delta; check its signatures with `modelfleet bundle verify`"
    )
