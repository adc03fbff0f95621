"""A real server app on a real database (SQLite and PostgreSQL), real bundles, and a fleet to drive it.

Bundles are built once per session from the scikit-learn digits MLP with
``build_bundle``: a lineage 1.0.0 -> 1.1.0 -> 1.2.0 signed by the key the
server trusts, and one version signed by a key it does not know. Devices are
Ed25519 key pairs that sign their enrollment like the agent will.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from modelfleet.bundle import BuildOptions, DeviceProfile, SigningKey, ValidationSet, build_bundle
from modelfleet.clock import ManualClock
from modelfleet.protocol import EnrollRequest, enrollment_message
from modelfleet.server import ServerConfig, create_app
from modelfleet.sim import digits_mlp
from modelfleet.store import AdminRole, create_admin_token, session_factory

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROFILE = DeviceProfile(arch="aarch64", ram_bytes=2**31, disk_free_bytes=2**33, runtimes={"onnxruntime": "1.20.0"})
MODEL = "digits"


@dataclass(frozen=True)
class Bundles:
    """Real signed bundles of the digits model."""

    key_file: Path
    versions: dict[str, Path]
    untrusted: Path
    other_bytes: Path
    release_taken: Path
    model: Path
    validation: ValidationSet
    labels: tuple[str, ...]

    def __getitem__(self, version: str) -> Path:
        return self.versions[version]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """digits 1.0.0 (release 1) -> 1.1.0 (2) -> 1.2.0 (3), and 2.0.0 signed by an unknown key."""
    directory = tmp_path_factory.mktemp("bundles")
    case = digits_mlp(directory / "digits.onnx")
    validation = ValidationSet({"x": case.x_val}, case.y_val)
    key = SigningKey.generate()
    _, key_file = key.save(directory / "keys", "release")
    versions: dict[str, Path] = {}
    parent = None
    for release, version in enumerate(("1.0.0", "1.1.0", "1.2.0"), start=1):
        options = BuildOptions(
            name=MODEL, version=version, release=release, parent=parent, labels=case.labels, dataset="digits"
        )
        versions[version] = directory / f"digits-{version}.mfb"
        build_bundle(case.path, validation, [key], versions[version], options)
        parent = version
    untrusted = directory / "digits-2.0.0.mfb"
    options = BuildOptions(name=MODEL, version="2.0.0", release=9, labels=case.labels)
    build_bundle(case.path, validation, [SigningKey.generate()], untrusted, options)
    other_bytes = directory / "digits-1.0.0-rebuilt.mfb"
    options = BuildOptions(name=MODEL, version="1.0.0", release=1, labels=case.labels)
    build_bundle(case.path, validation, [key], other_bytes, options, clock=ManualClock(START))
    release_taken = directory / "digits-1.5.0.mfb"
    options = BuildOptions(name=MODEL, version="1.5.0", release=1, labels=case.labels)
    build_bundle(case.path, validation, [key], release_taken, options)
    return Bundles(key_file, versions, untrusted, other_bytes, release_taken, case.path, validation, case.labels)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def server_config(tmp_path: Path, database_url: str, bundles: Bundles) -> ServerConfig:
    return ServerConfig(
        data_dir=tmp_path / "data",
        database_url=database_url,
        blob_dir=tmp_path / "data" / "blobs",
        trusted_keys=(bundles.key_file,),
        public_url="http://testserver",
        max_body_bytes=256 * 1024,
        max_upload_bytes=1024 * 1024,
    )


@pytest.fixture
def app(server_config: ServerConfig, clock: ManualClock, engine: Engine) -> FastAPI:
    return create_app(server_config, clock=clock, engine=engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


class Statements:
    """Records the SQL statements an engine runs (an executemany counts once)."""

    def __init__(self, engine: Engine) -> None:
        self.all: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, *args: Any) -> None:
        statement = args[2]  # (conn, cursor, statement, parameters, context, executemany)
        self.all.append(" ".join(statement.split()))

    @property
    def writes(self) -> list[str]:
        return [s for s in self.all if s.split(" ", 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}]

    @property
    def reads(self) -> list[str]:
        return [s for s in self.all if s.upper().startswith("SELECT")]

    def clear(self) -> None:
        self.all.clear()


@pytest.fixture
def statements(engine: Engine) -> Statements:
    return Statements(engine)


@dataclass
class Device:
    """A device: its id, its own key pair, and the credential enrollment gave it."""

    id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    credential: str | None = None

    @property
    def public_key(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    @property
    def headers(self) -> dict[str, str]:
        assert self.credential is not None, f"{self.id} has no credential"
        return {"Authorization": f"Bearer {self.credential}"}

    def enroll_body(self, issued_at: datetime, token: str | None = None, *, proof_key=None) -> str:
        request = EnrollRequest(
            device_id=self.id,
            public_key=self.public_key,
            issued_at=issued_at,
            enroll_token=token,
            inventory=PROFILE,
            proof="",
        )
        signature = (proof_key or self.key).sign(enrollment_message(request))
        return request.model_copy(update={"proof": base64.b64encode(signature).decode()}).model_dump_json()


def installed(version: str, release: int, state: str = "committed") -> dict[str, Any]:
    return {"model": MODEL, "version": version, "release": release, "state": state}


class Fleet:
    """Drives the app as admins and devices do."""

    MODEL = MODEL
    PROFILE = PROFILE
    installed = staticmethod(installed)

    def __init__(self, client: TestClient, engine: Engine, clock: ManualClock, bundles: Bundles) -> None:
        self.client = client
        self.engine = engine
        self.clock = clock
        self.bundles = bundles
        self._tokens: dict[str, str] = {}

    def admin(self, role: AdminRole = "admin") -> dict[str, str]:
        if role not in self._tokens:
            with session_factory(self.engine).begin() as session:
                issued = create_admin_token(session, name=f"test-{role}", role=role, now=self.clock.now())
            self._tokens[role] = issued.secret
        return {"Authorization": f"Bearer {self._tokens[role]}"}

    def enroll(self, device: Device, *, token: str | None = None, issued_at: datetime | None = None) -> httpx.Response:
        self.clock.advance(1)
        body = device.enroll_body(issued_at or self.clock.now(), token)
        response = self.client.post("/v1/devices/enroll", content=body, headers={"Content-Type": "application/json"})
        if response.status_code == 200:
            device.credential = response.json()["credential"]
        return response

    @staticmethod
    def new_device(device_id: str) -> Device:
        """A device with a fresh key pair that has not enrolled yet."""
        return Device(device_id)

    def enrollment_token(self, *, max_uses: int = 1, tags: dict[str, str] | None = None, **extra: Any) -> str:
        body = {"max_uses": max_uses, "tags": tags or {}, **extra}
        response = self.client.post("/v1/admin/enrollment-tokens", json=body, headers=self.admin())
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def device(self, device_id: str, *, tags: dict[str, str] | None = None) -> Device:
        """An accepted device with a credential (enrolled with a one-use token carrying ``tags``)."""
        device = Device(device_id)
        response = self.enroll(device, token=self.enrollment_token(tags=tags))
        assert response.status_code == 200, response.text
        return device

    def upload(self, bundle: str | Path, role: AdminRole = "admin") -> httpx.Response:
        """Upload a version of the session's bundles, or any file."""
        data = (bundle if isinstance(bundle, Path) else self.bundles[bundle]).read_bytes()
        headers = {**self.admin(role), "Content-Type": "application/octet-stream"}
        return self.client.post("/v1/admin/bundles", content=data, headers=headers)

    def pin(self, version: str, *, device: Device | None = None, selector: dict[str, str] | None = None) -> int:
        body: dict[str, Any] = {"model": MODEL, "version": version}
        body |= {"device_id": device.id} if device is not None else {"selector": selector}
        response = self.client.post("/v1/admin/pins", json=body, headers=self.admin())
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def checkin(self, device: Device, *, installed_models=(), etag: str | None = None, profile=PROFILE):
        body = {"inventory": profile.model_dump(mode="json"), "installed": list(installed_models)}
        headers = {**device.headers, **({"If-None-Match": etag} if etag else {})}
        return self.client.post("/v1/devices/checkin", json=body, headers=headers)


@pytest.fixture
def fleet(client: TestClient, engine: Engine, clock: ManualClock, bundles: Bundles) -> Fleet:
    return Fleet(client, engine, clock, bundles)


LATENCY_BINS = 58


@pytest.fixture
def summary():
    """Factory of valid summary documents: ``summary(id=..., n=..., version=..., window_start=...)``."""

    def make(**changes: Any) -> dict[str, Any]:
        n = changes.pop("n", 10)
        document = {
            "id": "summary-0001",
            "model": MODEL,
            "version": "1.0.0",
            "window_start": START.isoformat(),
            "window_seconds": 300,
            "n": n,
            "errors": 0,
            "latency_counts": [0] * 20 + [n] + [0] * (LATENCY_BINS - 21),
            "latency_sum_ms": 2.5 * n,
            "confidence_counts": [0, n],
            "confidence_sum": 0.75 * n,
            "confidence_sum_sq": 0.5625 * n,
            "predicted_counts": [n] + [0] * 9,
            "feature_counts": [[n, 0], [0, n]],
        }
        document.update(changes)
        return document

    return make
