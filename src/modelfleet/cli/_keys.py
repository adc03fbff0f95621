"""``modelfleet keys``: make Ed25519 signing keys."""

from __future__ import annotations

from pathlib import Path

import typer

from modelfleet.bundle import SigningKey
from modelfleet.cli._console import out

__all__ = ["keys_app"]

keys_app = typer.Typer(help="Make and show signing keys.", no_args_is_help=True)


@keys_app.command("generate")
def generate(
    out_dir: Path = typer.Option(..., "--out", help="Directory for NAME.key (mode 0600) and NAME.pub."),
    name: str | None = typer.Option(None, "--name", help="File stem; default 'signing-<first 8 of key id>'."),
) -> None:
    """Generate an Ed25519 key pair for signing bundles."""
    key = SigningKey.generate()
    stem = name or f"signing-{key.public.keyid[:8]}"
    private_path, public_path = key.save(out_dir, stem)
    out.print(f"key id  {key.public.keyid}")
    out.print(f"private {private_path}  (mode 0600; keep it off devices)")
    out.print(f"public  {public_path}  (pin it on devices and the server)")
