"""``modelfleet agent``: run the device agent, and show what it runs.

The first ``agent run`` saves the server, the trusted bundle keys (``--trust``,
``--threshold``), the tags, the enrollment token, the MQTT broker for wake-ups
(``--mqtt``, optional) and an HTTP proxy (``--proxy``, optional; else the agent
uses ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``) into ``DATA/agent.json``;
later runs read them from there. Trust anchors never change silently: a
different ``--trust`` set for an existing data directory is refused.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from modelfleet.agent import AgentConfig, DeviceIdentity, agent_status
from modelfleet.agent._entry import command_line
from modelfleet.bundle import PublicKey
from modelfleet.cli._console import out
from modelfleet.config import ProxyServer
from modelfleet.errors import ConfigError

__all__ = ["agent_app"]

agent_app = typer.Typer(help="Run the device agent and show its state.", no_args_is_help=True)


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"--tag expects key=value, got {pair!r}"
            raise ConfigError(msg, code="bad_tag")
        tags[key] = value
    return tags


def _config(
    data_dir: Path,
    server: str | None,
    token: str | None,
    identity: str | None,
    tags: list[str],
    trust: list[Path],
    threshold: int | None,
    mqtt: str | None = None,
    proxy: str | None = None,
) -> AgentConfig:
    """The saved configuration, updated by the options given; created on the first run."""
    if proxy:
        ProxyServer.from_url(proxy, source="--proxy")  # refuse a bad proxy URL before saving it
    saved = AgentConfig.load(data_dir)
    pems = tuple(PublicKey.from_file(path).to_pem().decode() for path in trust)
    if saved is None:
        if server is None or not pems:
            msg = "the first run needs --server and at least one --trust key"
            raise ConfigError(msg, code="agent_not_configured")
        if token is None and identity is None:
            msg = "the first run needs --enroll-token or --identity (a device id an admin approves)"
            raise ConfigError(msg, code="agent_not_configured")
        device_id = DeviceIdentity.load_or_create(data_dir, identity).device_id
        config = AgentConfig(
            server=server,
            device_id=device_id,
            trusted_keys=pems,
            threshold=threshold or 1,
            tags=_tags(tags),
            enroll_token=token,
            mqtt_url=mqtt or None,
            proxy_url=proxy or None,
        )
        config.trusted()  # refuse a threshold above the keys before saving
        config.save(data_dir)
        return config
    if pems and (sorted(pems) != sorted(saved.trusted_keys) or (threshold or saved.threshold) != saved.threshold):
        msg = f"{data_dir} already trusts other keys; refusing to change the trust anchors of a configured agent"
        raise ConfigError(msg, code="trust_changed")
    if identity is not None and identity != saved.device_id:
        msg = f"{data_dir} belongs to device {saved.device_id!r}, not {identity!r}"
        raise ConfigError(msg, code="identity_mismatch")
    changes = _changes(server, token, tags, mqtt, proxy)
    if changes:
        saved = AgentConfig.model_validate({**saved.model_dump(), **changes})
        saved.save(data_dir)
    return saved


def _changes(
    server: str | None, token: str | None, tags: list[str], mqtt: str | None, proxy: str | None
) -> dict[str, object]:
    """The saved settings the options given replace."""
    changes: dict[str, object] = {}
    if server is not None:
        changes["server"] = server
    if token is not None:
        changes["enroll_token"] = token
    if tags:
        changes["tags"] = _tags(tags)
    if mqtt is not None:
        changes["mqtt_url"] = mqtt or None  # --mqtt "" turns wake-ups off
    if proxy is not None:
        changes["proxy_url"] = proxy or None  # --proxy "" goes back to the environment's proxies
    return changes


@agent_app.command("run")
def run(
    data_dir: Path = typer.Option(..., "--data-dir", help="The agent's data directory."),
    server: str | None = typer.Option(None, "--server", help="The fleet server URL (saved on the first run)."),
    enroll_token: str | None = typer.Option(None, "--enroll-token", help="Enrollment token (mfe_...)."),
    identity: str | None = typer.Option(None, "--identity", help="Device id to enroll as (else generated)."),
    tag: list[str] = typer.Option([], "--tag", help="key=value tag in the inventory; repeatable."),
    trust: list[Path] = typer.Option([], "--trust", help="Public key bundles must be signed by; repeatable."),
    threshold: int | None = typer.Option(None, "--threshold", min=1, help="Distinct trusted signatures needed."),
    mqtt: str | None = typer.Option(
        None, "--mqtt", help="MQTT broker for wake-ups, e.g. mqtt://127.0.0.1:1883 (saved; '' turns it off)."
    ),
    proxy: str | None = typer.Option(
        None,
        "--proxy",
        help="HTTP proxy for every request, http://[user:password@]host[:port] (saved; '' removes it). "
        "Without it HTTPS_PROXY / HTTP_PROXY apply; NO_PROXY applies either way.",
    ),
    once: bool = typer.Option(False, "--once", help="Run one step and exit (0 when it succeeded)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every step."),
) -> None:
    """Enroll, check in, install what the server assigns and forward telemetry, until stopped."""
    data_dir = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _config(data_dir, server, enroll_token, identity, tag, trust, threshold, mqtt, proxy)
    # The loop runs in this process without the command line: see modelfleet.agent._entry.
    sys.stdout.flush()
    sys.stderr.flush()
    argv = command_line(data_dir, once=once, verbose=verbose)
    os.execv(argv[0], argv)  # noqa: S606 - our own interpreter and module, no shell


@agent_app.command("status")
def status(
    data_dir: Path = typer.Option(..., "--data-dir", help="The agent's data directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the device id, enrollment, installed versions and the outbox (no network)."""
    if not (data_dir / "agent.json").exists():
        msg = f"{data_dir} holds no agent (run `modelfleet agent run` first)"
        raise ConfigError(msg, code="agent_not_configured")
    report = agent_status(data_dir.absolute())
    if as_json:
        typer.echo(json.dumps(report, indent=1, sort_keys=True))
        return
    out.print(f"device   {report['device_id']} ({report['status']}, enrolled: {report['enrolled']})")
    out.print(f"server   {report['server']}")
    out.print(f"checkin  {report['last_checkin'] or '-'}")
    if report["last_error"]:
        out.print(f"error    {report['last_error']}")
    for model, entry in report["models"].items():
        out.print(
            f"model    {model}: current {entry['current'] or '-'}, previous {entry['previous'] or '-'}, "
            f"state {entry['state']}" + (f", last error: {entry['last_error']}" if entry["last_error"] else "")
        )
    box = report["outbox"]
    out.print(f"outbox   {box['pending_events']} events and {box['pending_summaries']} summaries pending")
