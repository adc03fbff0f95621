"""Admin commands that speak the server's admin API: tokens, bundles, devices, pins.

Each command takes ``--server`` and ``--token`` or falls back to
``MODELFLEET_SERVER`` / ``MODELFLEET_TOKEN`` (read by :func:`modelfleet.config.load_settings`).
Exit status: 0 done, 1 the server (or a file) refused, 2 the command line is wrong.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from modelfleet.bundle import PublicKey
from modelfleet.cli._client import AdminClient
from modelfleet.cli._console import EXIT_REFUSED, err, out
from modelfleet.cli._render import human_bytes, print_json
from modelfleet.config import load_settings
from modelfleet.errors import ConfigError, ModelfleetError, TransportError

__all__ = ["devices_app", "enrollment_token_app", "pin", "pins_app", "push", "token_app", "unpin"]

EXIT_USAGE = 2
ROLES = ("admin", "release-manager", "viewer")

token_app = typer.Typer(help="Admin API tokens.", no_args_is_help=True)
devices_app = typer.Typer(help="List, approve, tag, wake, revoke and pre-authorize devices.", no_args_is_help=True)
pins_app = typer.Typer(help="Pins: which version a device or a tagged group runs.", no_args_is_help=True)
enrollment_token_app = typer.Typer(help="Tokens that let devices enroll without approval.", no_args_is_help=True)

_SERVER = typer.Option(None, "--server", help="Server URL [default: $MODELFLEET_SERVER].", show_default=False)
_TOKEN = typer.Option(None, "--token", help="Admin token [default: $MODELFLEET_TOKEN].", show_default=False)
_JSON = typer.Option(False, "--json", help="Print the server's JSON answer.")


def usage_error(message: str) -> NoReturn:
    """Print one line about a wrong command line and exit with status 2."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(EXIT_USAGE)


def connect(server: str | None, token: str | None) -> AdminClient:
    """An admin client from the options, or else from ``MODELFLEET_SERVER`` / ``MODELFLEET_TOKEN``."""
    settings = load_settings()
    url = server or settings.server
    secret = token or settings.token
    if not url:
        usage_error("no server: pass --server URL or set MODELFLEET_SERVER")
    if not secret:
        usage_error("no admin token: pass --token TOKEN or set MODELFLEET_TOKEN")
    return AdminClient(url, secret)


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """``["site=berlin", "ring=canary"]`` as a dict; a pair without ``=`` is a usage error."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            usage_error(f"tag {pair!r} must look like key=value")
        tags[key.strip()] = value.strip()
    return tags


def _items(answer: Any, key: str) -> list[dict[str, Any]]:  # noqa: ANN401 - JSON
    """A list answer, bare or wrapped as ``{key: [...]}``."""
    items = answer.get(key, []) if isinstance(answer, dict) else answer
    return [item for item in items or [] if isinstance(item, dict)]


def _tags_text(tags: object) -> str:
    if not isinstance(tags, dict) or not tags:
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))


@token_app.command("create")
def token_create(
    role: str = typer.Option(..., "--role", help="admin | release-manager | viewer."),
    name: str = typer.Option(..., "--name", help="Who or what will use it, e.g. 'ci'."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Create an admin API token; it is printed once (stdout), the server keeps only its hash."""
    if role not in ROLES:
        usage_error(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    with connect(server, token) as client:
        answer = client.post("/tokens", {"name": name, "role": role})
    typer.echo(answer["token"])
    err.print(
        f"created {answer.get('role', role)} token {answer.get('name', name)!r}. "
        "[bold yellow]It is shown only this once: store it now[/] (the server keeps only its hash)."
    )


@contextmanager
def _upload_bar(bundle: Path, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    if not enabled:
        yield lambda _sent, _total: None
        return
    columns = (TextColumn(f"upload {bundle.name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("upload", total=None)
        yield lambda sent, total: progress.update(task, completed=sent, total=total)


def push(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="The signed .mfb to upload."),
    show_progress: bool = typer.Option(True, "--progress/--no-progress", help="Upload progress bar on stderr."),
    as_json: bool = _JSON,
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Upload a bundle; the server verifies its signatures before it stores anything."""
    with connect(server, token) as client, _upload_bar(bundle, show_progress) as progress:
        try:
            stored, created = client.upload_bundle(bundle, progress)
        except TransportError:
            raise
        except ModelfleetError as refusal:
            err.print(f"[bold red]REFUSED[/] the server refused {bundle}: {refusal.message} [dim]\\[{refusal.code}][/]")
            raise typer.Exit(EXIT_REFUSED) from None
    if as_json:
        print_json(stored)
        return
    size = stored.get("size")
    digest = str(stored.get("sha256", ""))[:16]
    what = "stored" if created else "already stored (identical bytes)"
    out.print(
        f"{what} {stored['model']} {stored['version']} (release {stored['release']}"
        f"{f', {human_bytes(size)}' if isinstance(size, int) else ''}, sha256 {digest}...)"
    )


@devices_app.command("list")
def devices_list(
    status: str | None = typer.Option(None, "--status", help="Only devices in this state, e.g. pending."),
    tag: list[str] = typer.Option([], "--tag", help="Only devices with this tag key=value; repeat."),
    as_json: bool = _JSON,
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """List devices with their state, tags and what they run."""
    params: dict[str, Any] = {}
    if status:
        params["status"] = status
    if tag:
        params["tag"] = [f"{k}={v}" for k, v in parse_tags(tag).items()]
    with connect(server, token) as client:
        devices = _items(client.get("/devices", params), "devices")
    if as_json:
        print_json(devices)
        return
    table = Table("device", "status", "tags", "runs", "last seen", box=None, header_style="bold")
    for device in devices:
        runs = ", ".join(
            f"{m.get('model')} {m.get('version') or '-'}" for m in device.get("installed") or [] if isinstance(m, dict)
        )
        table.add_row(
            str(device.get("id")),
            str(device.get("status")),
            _tags_text(device.get("tags")),
            runs,
            str(device.get("last_seen_at") or "never"),
        )
    out.print(table)
    out.print(f"{len(devices)} device(s)")


@devices_app.command("approve")
def devices_approve(
    device_id: str = typer.Argument(..., metavar="ID", help="The pending device."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Accept a pending device; its next enroll call gets a credential."""
    with connect(server, token) as client:
        device = client.post(f"/devices/{device_id}/approve")
    out.print(f"approved {device_id} (status {device.get('status', 'accepted') if device else 'accepted'})")


@devices_app.command("tag")
def devices_tag(
    device_id: str = typer.Argument(..., metavar="ID", help="The device."),
    pairs: list[str] | None = typer.Argument(None, metavar="K=V...", help="Tags to set."),
    remove: list[str] = typer.Option([], "--remove", help="Tag key to remove; repeat."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Set and remove tags on a device (tags select pins and rollouts)."""
    changes = parse_tags(pairs or [])
    if not changes and not remove:
        usage_error("give at least one key=value to set or --remove KEY")
    with connect(server, token) as client:
        current = client.get(f"/devices/{device_id}").get("tags") or {}
        tags = {k: v for k, v in {**current, **changes}.items() if k not in remove}
        device = client.put(f"/devices/{device_id}/tags", {"tags": tags})
    final = device.get("tags", tags) if isinstance(device, dict) else tags
    out.print(f"{device_id} tags: {_tags_text(final) or '(none)'}")


@devices_app.command("revoke")
def devices_revoke(
    device_id: str = typer.Argument(..., metavar="ID", help="The device."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Revoke a device: its credential stops working at once."""
    with connect(server, token) as client:
        client.post(f"/devices/{device_id}/revoke")
    out.print(f"revoked {device_id}: its credential no longer works")


@devices_app.command("wake")
def devices_wake(
    device_id: str = typer.Argument(..., metavar="ID", help="The device."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Ask a device to check in now (over the server's MQTT broker); otherwise it checks in at its next poll."""
    with connect(server, token) as client:
        answer = client.post(f"/devices/{device_id}/wake")
    detail = answer.get("detail", "") if isinstance(answer, dict) else ""
    if isinstance(answer, dict) and answer.get("sent"):
        out.print(f"woke {device_id}: {detail}")
    else:
        out.print(f"{device_id} not woken: {detail}")


def _device_public_key(path: Path) -> str:
    """Base64 raw Ed25519 key from a PEM public key file or a file holding the base64 raw key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read public key {path}: {exc.strerror}"
        raise ConfigError(msg, code="bad_key_file") from None
    if b"-----BEGIN" in data:
        return base64.b64encode(PublicKey.from_pem(data).raw).decode("ascii")
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:  # Ed25519 public keys are 32 bytes
        msg = f"{path} holds neither a PEM Ed25519 public key nor a base64 raw 32-byte key"
        raise ConfigError(msg, code="bad_key_file")
    return base64.b64encode(raw).decode("ascii")


@devices_app.command("preauthorize")
def devices_preauthorize(
    device_id: str = typer.Argument(..., metavar="ID", help="The device id it will enroll with."),
    public_key: Path = typer.Option(..., "--public-key", exists=True, dir_okay=False, help="Its Ed25519 public key."),
    tag: list[str] = typer.Option([], "--tag", help="Tag to give it on enrollment, key=value; repeat."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Accept a device before it first enrolls: the first enroll with this exact key gets a credential."""
    key = _device_public_key(public_key)
    body: dict[str, Any] = {"device_id": device_id, "public_key": key}
    if tag:
        body["tags"] = parse_tags(tag)
    with connect(server, token) as client:
        client.post("/devices/preauthorize", body)
    keyid = PublicKey(base64.b64decode(key)).keyid
    out.print(f"pre-authorized {device_id} with key {keyid[:16]}")


def pin(
    model: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Version to run."),
    device: str | None = typer.Option(None, "--device", help="Pin one device."),
    tag: list[str] = typer.Option([], "--tag", help="Pin every device with this tag key=value; repeat to AND."),
    as_json: bool = _JSON,
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Pin a version to one device or to the devices matching tags (device pin beats tag pin)."""
    if (device is None) == (not tag):
        usage_error("give exactly one of --device ID or --tag key=value")
    body: dict[str, Any] = {"model": model, "version": version}
    if device is not None:
        body["device_id"] = device
        target = f"device {device}"
    else:
        body["selector"] = parse_tags(tag)
        target = f"devices tagged {_tags_text(body['selector'])}"
    with connect(server, token) as client:
        created = client.post("/pins", body)
    if as_json:
        print_json(created)
        return
    out.print(f"pin {created['id']}: {model} {version} on {target}")


@pins_app.command("list")
def pins_list(
    as_json: bool = _JSON,
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """List pins, most specific first."""
    with connect(server, token) as client:
        pins = _items(client.get("/pins"), "pins")
    if as_json:
        print_json(pins)
        return
    table = Table("id", "model", "version", "target", "created", box=None, header_style="bold")
    for item in pins:
        target = f"device {item['device_id']}" if item.get("device_id") else f"tags {_tags_text(item.get('selector'))}"
        table.add_row(
            str(item.get("id")),
            str(item.get("model")),
            str(item.get("version")),
            target,
            str(item.get("created_at", "")),
        )
    out.print(table)
    out.print(f"{len(pins)} pin(s)")


def unpin(
    pin_id: int = typer.Argument(..., metavar="ID", help="The pin id (see `modelfleet pins list`)."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Remove a pin; devices fall back to the next pin or the newest version."""
    with connect(server, token) as client:
        client.delete(f"/pins/{pin_id}")
    out.print(f"removed pin {pin_id}")


@enrollment_token_app.command("create")
def enrollment_token_create(
    uses: int = typer.Option(1, "--uses", min=1, help="How many devices may enroll with it."),
    expires_hours: float | None = typer.Option(None, "--expires-hours", min=0, help="Expire after this many hours."),
    tag: list[str] = typer.Option([], "--tag", help="Tag given to devices that enroll with it, key=value; repeat."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Create an enrollment token; it is printed once (stdout), the server keeps only its hash."""
    body: dict[str, Any] = {"max_uses": uses, "tags": parse_tags(tag)}
    if expires_hours is not None:
        body["expires_in_seconds"] = round(expires_hours * 3600)
    with connect(server, token) as client:
        answer = client.post("/enrollment-tokens", body)
    typer.echo(answer["token"])
    expiry = f", expires {answer['expires_at']}" if answer.get("expires_at") else ""
    err.print(
        f"enrollment token for {uses} device(s){expiry}. "
        "[bold yellow]It is shown only this once: store it now[/] (the server keeps only its hash)."
    )
