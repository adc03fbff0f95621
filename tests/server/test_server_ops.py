"""Operations: health, Prometheus metrics by route template, the OpenAPI document, the resolver seam."""

from fastapi.testclient import TestClient

from modelfleet.protocol import Artifact, Candidate, DesiredModel
from modelfleet.server import create_app


def test_health_answers_when_the_database_does(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_count_requests_by_route_template(fleet, client):
    device = fleet.device("dev-1")
    client.get(f"/v1/artifacts/{'a' * 64}", headers=device.headers)
    client.get(f"/v1/artifacts/{'b' * 64}", headers=device.headers)
    client.get("/no/such/path")
    fleet.upload("1.0.0")
    text = client.get("/metrics").text
    assert 'modelfleet_http_requests_total{method="GET",route="/v1/artifacts/{sha256}",status="404"} 2.0' in text
    assert 'modelfleet_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'modelfleet_bundle_uploads_total{result="stored"} 1.0' in text
    assert 'modelfleet_http_request_duration_seconds_count{route="/v1/devices/enroll"} 1.0' in text


def test_the_openapi_document_describes_bodies_and_credentials(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in (
        "EnrollRequest",
        "CheckinRequest",
        "TelemetryBatch",
        "EventBatch",
        "DeviceProfile",
        "PinIn",
        "ErrorBody",
    ):
        assert name in schemas, name
    checkin = document["paths"]["/v1/devices/checkin"]["post"]
    assert checkin["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CheckinRequest"
    }
    assert checkin["security"] == [{"DeviceCredential": []}]
    assert document["paths"]["/v1/admin/pins"]["post"]["security"] == [{"AdminToken": []}]
    upload = document["paths"]["/v1/admin/bundles"]["post"]["requestBody"]["content"]
    assert list(upload) == ["application/octet-stream"]


def test_the_desired_state_resolver_is_pluggable(server_config, clock, engine, fleet):
    def canary(connection, device, public_url):
        artifact = Artifact(url=f"{public_url}/v1/artifacts/{'c' * 64}", sha256="c" * 64, size=1)
        candidate = Candidate(version="9.1.0", release=10, artifact=artifact)
        return [
            DesiredModel(
                model="digits", version="9.0.0", release=9, mode="shadow", rollout_id="r-1", artifact=artifact,
                candidate=candidate,
            )
        ]  # fmt: skip

    with TestClient(create_app(server_config, clock=clock, engine=engine, resolver=canary)) as client:
        fleet.client = client
        (desired,) = fleet.checkin(fleet.device("dev-1")).json()["desired"]
    assert (desired["version"], desired["mode"], desired["rollout_id"]) == ("9.0.0", "shadow", "r-1")
    assert desired["candidate"]["version"] == "9.1.0"


def test_an_unexpected_failure_is_a_500_without_internals(server_config, clock, engine, fleet):
    def broken(connection, device, public_url):
        msg = "secret internal detail"
        raise RuntimeError(msg)

    app = create_app(server_config, clock=clock, engine=engine, resolver=broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        fleet.client = client
        response = fleet.checkin(fleet.device("dev-1"))
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "the server failed; see its log", "field": None}


def test_metrics_count_check_ins_by_route_template_and_status(client, fleet):
    device = fleet.device("dev-1")
    etag = fleet.checkin(device).headers["ETag"]
    assert fleet.checkin(device, etag=etag).status_code == 304
    assert (
        fleet.client.post("/v1/devices/checkin", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    text = client.get("/metrics").text
    for status, count in (("200", 1), ("304", 1), ("401", 1)):
        line = (
            f'modelfleet_http_requests_total{{method="POST",route="/v1/devices/checkin",status="{status}"}} {count}.0'
        )
        assert line in text
    assert "modelfleet_checkins_not_modified_total 1.0" in text
