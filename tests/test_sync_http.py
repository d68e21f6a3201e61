"""The HTTP transport's reading of central's answers, including broken ones.

Central is outside the gateway, so these unit tests may fake it with httpx's
MockTransport to produce answers the reference receiver never gives (a 200
that is not JSON, unknown statuses). Real-server behaviour: tests/test_sync.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from gateway.sync.http import HttpTransport, retry_after, sign
from gateway.sync.outbox import METER_READINGS, OutboxItem
from gateway.sync.transport import AuthFailed, Refused, Transient

ITEM = OutboxItem(1, METER_READINGS, "r1", 0, '{"reading_id":"r1"}')


def send_with(handler) -> list:  # type: ignore[no-untyped-def]
    async def main() -> list:
        transport = HttpTransport(
            "http://central.test",
            "site-a",
            "tok",
            signing_secret="k",
            transport=httpx.MockTransport(handler),
        )
        try:
            return await transport.send(METER_READINGS, "B1", [ITEM])
        finally:
            await transport.close()

    return asyncio.run(main())


def test_the_request_is_the_contracts_exact_bytes_signed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": [{"reading_id": "r1", "status": "accepted"}]})

    [result] = send_with(handler)
    assert result.status == "accepted"
    request = seen[0]
    assert request.url.path == "/v1/sites/site-a/meter-readings"
    assert request.headers["Authorization"] == "Bearer tok"
    body = request.content
    assert json.loads(body) == {"batch_id": "B1", "readings": [{"reading_id": "r1"}]}
    digest = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert request.headers["X-Signature"] == f"sha256={digest}"
    assert request.headers["X-Timestamp"].isdigit()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>proxy error</html>"),
        httpx.Response(200, json={"results": [{"reading_id": "r1", "status": "maybe"}]}),
        httpx.Response(200, json={"no_results": []}),
        httpx.Response(200, json={"results": [{"status": "accepted"}]}),
    ],
)
def test_an_answer_that_cannot_be_read_delivers_nothing(answer: httpx.Response) -> None:
    with pytest.raises(Transient, match="unreadable answer"):
        send_with(lambda request: answer)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, Transient),
        (503, Transient),
        (408, Transient),
        (429, Transient),
        (401, AuthFailed),
        (403, AuthFailed),
        (400, Refused),
        (404, Refused),
        (413, Refused),
    ],
)
def test_status_codes_map_to_the_contracts_retry_rules(status: int, error: type) -> None:
    with pytest.raises(error):
        send_with(lambda request: httpx.Response(status, text="no"))


def test_a_connection_failure_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Transient, match="connection failed"):
        send_with(handler)


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after("7") == 7.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= (retry_after(format_datetime(later, usegmt=True)) or 0) <= 31
    assert retry_after("soon") is None
    assert retry_after(None) is None
    assert retry_after("-3") == 0.0


def test_sign_matches_the_contract() -> None:
    headers = sign(b"secret", b'{"a":1}', 1_700_000_000.9)
    assert headers["X-Timestamp"] == "1700000000"
    expected = hmac.new(b"secret", b'{"a":1}', hashlib.sha256).hexdigest()
    assert headers["X-Signature"] == "sha256=" + expected
