"""Open files of a simulated fleet: an idle device holds one (its model's lock); outboxes and sockets are not kept."""

from pathlib import Path

import pytest

from modelfleet.sim import Fleet, parse_scenario
from modelfleet.sim._training import build_version

pytestmark = pytest.mark.slow  # a server process, a trained model and two rounds of a small fleet

DEVICES = 30
SCENARIO = {
    "name": "files",
    "inferences": 50,
    "models": {"1.0.0": {"gains": [1.0], "temperatures": [8]}},
    "timeline": [{"at": "0m", "push": "1.0.0", "pin": True}],
    "sites": [{"name": "plant", "share": 1.0, "temperature": 8}],
}


def open_files():
    """This process's descriptors and what each points at."""
    table = {}
    for fd in Path("/proc/self/fd").iterdir():
        try:
            table[fd.name] = str(fd.readlink())
        except FileNotFoundError:  # the directory listing's own descriptor, closed already
            continue
    return table


def test_an_idle_device_holds_one_open_file_and_no_outbox_or_socket_of_its_own(tmp_path):
    scenario = parse_scenario(SCENARIO)
    before = open_files()
    fleet = Fleet(scenario, DEVICES, tmp_path)
    try:
        built = build_version("1.0.0", 1, scenario.models["1.0.0"], [fleet.server.signing_key], tmp_path / "b")
        fleet.push(built.path, "1.0.0")
        fleet.pin("1.0.0")
        fleet.round()
        last = fleet.round()
        held = {fd: target for fd, target in open_files().items() if fd not in before}
        assert last.running == {"1.0.0": DEVICES}
        assert fleet.summaries_sent() == fleet.summaries_stored() > 0, "outboxes opened per step still deliver"
        assert not [t for t in held.values() if "outbox" in t], "outboxes are closed between steps"
        sockets = [t for t in held.values() if t.startswith("socket:")]
        assert len(sockets) < DEVICES // 3, f"{len(sockets)} sockets: the devices share one connection pool"
        assert len(held) <= DEVICES + 25, f"{len(held)} open files for {DEVICES} devices"
    finally:
        fleet.close()
        fleet.stop_server()
