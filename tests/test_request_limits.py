"""Size limits and odd request lines, tried from outside over real HTTPS (issue 6, item 6).

- A URL over 32,768 characters is refused with 414 in the service's envelope, Dataverse's
  documented limit (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/overview);
  BC documents none and gets the same. A URL far beyond it (megabytes) is cut off by the HTTP
  server before a worker parses it, as the real front ends do, in plain text.
- A body over the documented maximum (Dataverse 128 MB, BC 350 MB) answers 413 in the envelope,
  without the server reading the body.
- A well-formed request with an odd method or path reaches the service and gets its envelope;
  `//` in a path is answered, never redirected to an HTML page.
"""

from __future__ import annotations

import time

import pytest

from tests.hostile import bc_envelope, dataverse_envelope, declared_length_only, raw_request

LIMIT = 32_768


@pytest.fixture(scope="module")
def targets(sandbox) -> dict[str, dict[str, str]]:
    """Per service: base URL, collection target, token and the envelope check."""
    company = f"/v2.0/{sandbox.info['tenant_id']}/production/api/v2.0/companies({sandbox.companies[0]})"
    return {
        "dataverse": {"url": sandbox.info["dataverse"]["url"], "collection": "/api/data/v9.2/accounts",
                      "token": sandbox.token(), "field": "name"},
        "bc": {"url": sandbox.info["bc"]["url"], "collection": f"{company}/customers",
               "token": sandbox.bc_token(), "field": "displayName"},
    }


def check(service: str, resp) -> dict:
    if service == "dataverse":
        return dataverse_envelope(resp.status, resp.content_type, resp.body)
    return bc_envelope(resp.status, resp.content_type, resp.body, resp.headers.get("request-id"))


def url_of_length(base: str, collection: str, field: str, length: int) -> str:
    """A GET target whose full URL (scheme, host, target) is exactly ``length`` characters."""
    head = f"{collection}?$filter={field}%20eq%20'"
    return head + "x" * (length - len(base) - len(head) - 1) + "'"


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_url_at_the_limit_is_served_one_more_is_414(sandbox, targets, service: str) -> None:
    t = targets[service]
    auth = {"Authorization": f"Bearer {t['token']}"}
    at_limit = url_of_length(t["url"], t["collection"], t["field"], LIMIT)
    assert len(t["url"] + at_limit) == LIMIT

    served = raw_request(t["url"], "GET", at_limit, ca_bundle=sandbox.ca_bundle, headers=auth)
    refused = raw_request(t["url"], "GET", at_limit + "x", ca_bundle=sandbox.ca_bundle, headers=auth)

    check(service, served)
    assert served.status == 200, served.body[:300]
    error = check(service, refused)
    assert refused.status == 414
    assert f"{LIMIT + 1:,} characters long; the maximum is {LIMIT:,}" in error["message"]


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_a_20_mb_url_is_cut_off_by_the_server_quickly(sandbox, targets, service: str) -> None:
    """Far beyond any limit: refused before a worker parses it (the fuzz run once held one for 17 s)."""
    t = targets[service]
    started = time.monotonic()
    try:
        resp = raw_request(t["url"], "GET", f"{t['collection']}?$search={'x' * (20 * 1024 * 1024)}",
                           ca_bundle=sandbox.ca_bundle, headers={"Authorization": f"Bearer {t['token']}"})
    except OSError:
        resp = None  # the server closed the connection while the client was still sending: also a refusal
    assert time.monotonic() - started < 10
    if resp is not None:
        assert resp.status == 414


@pytest.mark.parametrize(("service", "maximum"), [("dataverse", 128 * 1024 * 1024), ("bc", 350 * 1024 * 1024)])
def test_body_over_the_documented_maximum_is_413(sandbox, targets, service: str, maximum: int) -> None:
    t = targets[service]
    resp = declared_length_only(t["url"], t["collection"], maximum + 1, ca_bundle=sandbox.ca_bundle,
                                headers={"Authorization": f"Bearer {t['token']}"})

    check(service, resp)
    assert resp.status == 413


@pytest.mark.parametrize("service", ["dataverse", "bc"])
@pytest.mark.parametrize("method", ["MERGE", "FOO", "TRACE", "PROPFIND"])
def test_unsupported_method_is_405_in_the_envelope(sandbox, targets, service: str, method: str) -> None:
    t = targets[service]
    resp = raw_request(t["url"], method, t["collection"], ca_bundle=sandbox.ca_bundle,
                       headers={"Authorization": f"Bearer {t['token']}"})

    check(service, resp)
    assert resp.status == 405


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_lower_case_method_reaches_the_service(sandbox, targets, service: str) -> None:
    """The HTTP server used to answer `get` with its own plain-text 400; it is a well-formed request line.
    ASP.NET, behind both real services, matches methods without regard to case."""
    t = targets[service]
    resp = raw_request(t["url"], "get", t["collection"] + "?$top=1", ca_bundle=sandbox.ca_bundle,
                       headers={"Authorization": f"Bearer {t['token']}"})

    check(service, resp)
    assert resp.status == 200 and resp.content_type.startswith("application/json")


@pytest.mark.parametrize("service", ["dataverse", "bc"])
@pytest.mark.parametrize("query", ["$top=%zz", "$top=1%ff", "$filter=%C0%AF", "$select=%"])
def test_bad_percent_encoding_in_the_query_gets_the_envelope(sandbox, targets, service: str, query: str) -> None:
    t = targets[service]
    resp = raw_request(t["url"], "GET", f"{t['collection']}?{query}", ca_bundle=sandbox.ca_bundle,
                       headers={"Authorization": f"Bearer {t['token']}"})

    check(service, resp)
    assert 200 <= resp.status < 500


@pytest.mark.parametrize(("service", "path"), [
    ("dataverse", "/_sandbox//journal"), ("dataverse", "/api/data/v9.2//accounts"), ("bc", "/_sandbox//journal"),
    ("bc", "/v2.0//production/api/v2.0/companies"),
])
def test_double_slash_is_answered_not_redirected(sandbox, targets, service: str, path: str) -> None:
    t = targets[service]
    resp = raw_request(t["url"], "GET", path, ca_bundle=sandbox.ca_bundle,
                       headers={"Authorization": f"Bearer {sandbox.info['admin_token']}"})

    check(service, resp)
    assert resp.status != 308 and "location" not in resp.headers
    assert resp.content_type.startswith("application/json")


@pytest.mark.parametrize("target", ["/api/data/v9.2/accounts#x", "api/data/v9.2/accounts"])
def test_malformed_request_line_may_stay_plain_text(sandbox, targets, target: str) -> None:
    """What the real front ends do too: the request never reaches a service."""
    t = targets["dataverse"]
    resp = raw_request(t["url"], "GET", target, ca_bundle=sandbox.ca_bundle)
    assert resp.status == 400
