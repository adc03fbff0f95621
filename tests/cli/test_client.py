"""AdminClient's error mapping for answers a healthy server never gives (the real-server paths are in test_admin_cli).

A server that fails (5xx) or answers something that is not its JSON error shape
cannot be provoked from a real modelfleet server, so httpx's MockTransport
plays it here.
"""

import httpx
import pytest

from modelfleet.cli._client import AdminClient
from modelfleet.errors import BadDataError, ConfigError, ConflictError, ModelfleetError, TransportError


def client_answering(status, body=b"", content_type="application/json"):
    def handler(request):
        return httpx.Response(status, content=body, headers={"Content-Type": content_type})

    return AdminClient("http://fleet.test", "mfa_x", transport=httpx.MockTransport(handler))


def test_a_server_failure_is_a_transport_error_naming_the_request():
    with pytest.raises(TransportError) as caught:
        client_answering(500, b'{"error": "internal", "message": "the server failed; see its log", "field": null}').get(
            "/pins"
        )
    assert caught.value.code == "internal"
    assert "GET http://fleet.test/v1/admin/pins" in caught.value.message


def test_an_error_without_the_json_shape_keeps_its_status_as_code():
    with pytest.raises(ModelfleetError) as caught:
        client_answering(418, b"teapot", "text/plain").get("/pins")
    assert caught.value.code == "http_418"
    assert "418" in caught.value.message


def test_the_field_is_named_once():
    body = b'{"error": "invalid", "message": "max_uses: must be >= 1", "field": "max_uses"}'
    with pytest.raises(ModelfleetError) as caught:
        client_answering(422, body).post("/enrollment-tokens", {"max_uses": 0})
    assert caught.value.message == "max_uses: must be >= 1"
    body = b'{"error": "bad", "message": "out of range", "field": "tags.site"}'
    with pytest.raises(ModelfleetError) as caught:
        client_answering(422, body).post("/pins", {})
    assert caught.value.message == "out of range (field tags.site)"


def test_a_conflict_keeps_the_servers_code():
    body = b'{"error": "version_exists", "message": "digits 1.0.0 exists with other bytes", "field": null}'
    with pytest.raises(ConflictError) as caught:
        client_answering(409, body).get("/bundles")
    assert caught.value.code == "version_exists"


def test_a_success_that_is_not_json_is_bad_data():
    with pytest.raises(BadDataError):
        client_answering(200, b"<html>", "text/html").get("/pins")


def test_a_url_without_scheme_is_refused():
    with pytest.raises(ConfigError):
        AdminClient("fleet.test:8080", "mfa_x")
