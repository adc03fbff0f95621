"""``python -m modelfleet.agent --data-dir DIR [--once] [--verbose]``: the loop of a configured agent.

``modelfleet agent run`` checks its options, saves them in the data directory
(``agent.json``, the identity) and then replaces itself with this entry point
(``os.execv``: same process id, same signals and exit status), so the idle agent
does not hold the command line's Typer (about 4 MB of a 40 MB budget).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from modelfleet.agent._daemon import Agent, AgentConfig
from modelfleet.config import load_proxy_settings
from modelfleet.errors import ConfigError, ModelfleetError

__all__ = ["command_line", "main", "run"]

EXIT_REFUSED = 1


def command_line(data_dir: Path, *, once: bool, verbose: bool) -> list[str]:
    """The ``argv`` that runs this entry point for ``data_dir`` with this interpreter."""
    flags = [*(["--once"] if once else []), *(["--verbose"] if verbose else [])]
    return [sys.executable, "-m", "modelfleet.agent", "--data-dir", str(data_dir), *flags]


def run(data_dir: Path, *, once: bool) -> int:
    """Step once, or until SIGTERM/SIGINT; the exit status (0, or 1 when refused or stopped for good).

    Proxies: the saved ``proxy_url``, else ``HTTPS_PROXY`` / ``HTTP_PROXY``; ``NO_PROXY`` either way.

    Raises:
        ConfigError: the data directory holds no agent configuration, or a proxy URL is unusable.
    """
    config = AgentConfig.load(data_dir)
    if config is None:
        msg = f"{data_dir} holds no agent configuration; run `modelfleet agent run --server ... --trust ...` first"
        raise ConfigError(msg, code="agent_not_configured")
    proxy = load_proxy_settings(proxy=config.proxy_url)
    with Agent(data_dir, config, proxy=proxy) as agent:
        if once:
            result = agent.step()
            line = f"device {agent.identity.device_id}: {result.status}"
            if result.error:
                _say(f"{line}; error: {result.error}", error=True)
                return EXIT_REFUSED
            _say(f"{line}; next check-in in {result.delay_s:.0f} s")
            return 0 if result.ok else EXIT_REFUSED
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001 - signal handler signature
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        _say(f"agent for device {agent.identity.device_id} -> {config.server}")
        last = agent.run_forever(stop)
    if last is not None and last.stopped:
        _say(f"stopped: {last.error}", error=True)
        return EXIT_REFUSED
    return 0


def _say(line: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    stream.write(f"{line}\n")
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run; a modelfleet error is one line on stderr with its code, exit status 1."""
    parser = argparse.ArgumentParser(
        prog="python -m modelfleet.agent",
        description="Run the device agent of a data directory `modelfleet agent run` configured.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="The agent's data directory.")
    parser.add_argument("--once", action="store_true", help="Run one step and exit (0 when it succeeded).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Log every step.")
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    try:
        return run(args.data_dir.absolute(), once=args.once)
    except ModelfleetError as error:
        _say(f"error: {error.message} [{error.code}]", error=True)
        return EXIT_REFUSED
