"""Schemathesis against the running gateway's OpenAPI spec: for every operation,
requests generated from its schema (valid and edge values), sent with an admin
token (every permission) and with a guard's: not one answer may be a 5xx. The
live alarm stream is left out (it never ends by design; its roles are checked in
test_authz.py). Schemathesis drives hypothesis directly: its pytest plugin does
not run under this pytest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.harness.site import Site, running, write_site
from tests.test_authz import MATRIX

OPERATIONS = sorted(k for k in MATRIX if k != ("GET", "/api/v1/alarms/stream"))


@pytest.fixture(scope="module")
def gateway_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = write_site(tmp_path_factory.mktemp("fuzz"))
    with running(site):
        yield site


@pytest.fixture(scope="module")
def api_schema(gateway_site: Site) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{gateway_site.url}/openapi.json")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_request_the_schema_allows_gets_a_server_error(
    api_schema: schemathesis.BaseSchema, gateway_site: Site, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    failures: list[str] = []

    @settings(
        max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=operation.as_strategy())
    def send(case: schemathesis.Case) -> None:
        for role in ("admin", "guard"):
            response = case.call(headers=gateway_site.headers(role), timeout=10)
            if response.status_code >= 500:
                failures.append(
                    f"{role}: {case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                    f" → {response.status_code} {response.text[:200]}"
                )

    send()
    assert not failures, "\n".join(failures[:5])
