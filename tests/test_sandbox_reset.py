"""`POST /_sandbox/reset` empties the services without reusing anything handed out before it.

Row versions (Dataverse `versionnumber`, BC `timestamp`) go on growing across a reset, so an ETag taken
before it is stale afterwards (Dataverse 412, BC 409), and a change-tracking token from before it (a
delta link, or the next page of a tracked read) is answered the way Dataverse answers a token past its
retention: 400 ExpiredVersionStamp, never "200, no changes".
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
import sqlalchemy as sa

pytestmark = pytest.mark.storage

EXPIRED = ("0x80044352", "Version stamp associated with the client has expired. Please perform a full sync.")


def version_of(etag: str) -> int:
    """Dataverse ETags are the row's version number: W/"<versionnumber>"."""
    assert etag.startswith('W/"') and etag.endswith('"'), etag
    return int(etag[3:-1])


def current_version(sandbox: Any, service: str) -> int:
    store = sandbox.sandbox.backends[service].store
    with store.read() as conn:
        return store.current_version(conn)


def row_versions(sandbox: Any, service: str) -> list[int]:
    """The version of every row of every table of the service."""
    backend = sandbox.sandbox.backends[service]
    store = backend.store
    versions: list[int] = []
    with store.read() as conn:
        for entity in backend.schema:
            if entity.version_property:
                table = store.table(entity)
                versions.extend(int(v) for v in conn.execute(sa.select(table.c[entity.version_property])).scalars())
    assert versions, f"no rows in {service}"
    return versions


def lowest_row_version(sandbox: Any, service: str) -> int:
    """The smallest version any row carries (after a reset: what was drawn first)."""
    return min(row_versions(sandbox, service))


def reset_and_seed(sandbox: Any, service: str, *, seed: bool = True) -> None:
    resp = sandbox.control("POST", "reset", service=service)
    assert resp.status_code == 200 and resp.json() == {"status": "reset"}
    if seed:
        seeded = sandbox.control("POST", "seed", service=service, json={"fixture": "default"})
        assert seeded.status_code == 200, seeded.text


def assert_expired(resp: requests.Response) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["message"]) == EXPIRED


def test_dataverse_etag_delta_link_and_tracked_page_from_before_reset_are_refused(
        sandbox: Any, dv: requests.Session) -> None:
    accounts = f"{sandbox.api}/accounts"
    key = str(uuid.uuid4())
    assert dv.post(accounts, json={"accountid": key, "name": "Before reset"}).status_code == 204
    etag = dv.get(f"{accounts}({key})", params={"$select": "name"}).json()["@odata.etag"]
    tracked = dv.get(accounts, params={"$select": "name"}, headers={"Prefer": "odata.track-changes"})
    delta_link = tracked.json()["@odata.deltaLink"]
    first_page = dv.get(accounts, params={"$select": "name"},
                        headers={"Prefer": "odata.track-changes,odata.maxpagesize=1"})
    next_page = first_page.json()["@odata.nextLink"]
    assert dv.get(delta_link).json()["value"] == []  # valid until the reset
    before = current_version(sandbox, "dataverse")

    reset_and_seed(sandbox, "dataverse", seed=False)
    # The client re-creates its record under the id it kept: same key, new version.
    assert dv.post(accounts, json={"accountid": key, "name": "After reset"}).status_code == 204
    again = dv.get(f"{accounts}({key})", params={"$select": "name"}).json()
    assert version_of(again["@odata.etag"]) > before >= version_of(etag)

    stale = dv.patch(f"{accounts}({key})", json={"name": "Lost update"}, headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "0x80060882"
    assert dv.get(f"{accounts}({key})", params={"$select": "name"}).json()["name"] == "After reset"

    assert_expired(dv.get(delta_link))
    assert_expired(dv.get(next_page, headers={"Prefer": "odata.track-changes,odata.maxpagesize=1"}))

    # A fresh tracked read after the reset starts a new, working chain.
    fresh = dv.get(accounts, params={"$select": "name"}, headers={"Prefer": "odata.track-changes"}).json()
    assert [r["accountid"] for r in fresh["value"]] == [key]
    changes = dv.get(fresh["@odata.deltaLink"])
    assert changes.status_code == 200 and changes.json()["value"] == []


def test_a_delta_token_this_org_never_issued_is_refused(sandbox: Any, dv: requests.Session) -> None:
    ahead = current_version(sandbox, "dataverse") + 1000
    resp = dv.get(f"{sandbox.api}/accounts", params={"$select": "name", "$deltatoken": f"{ahead}!01/01/2030 00:00:00"})
    assert_expired(resp)


def test_bc_etag_from_before_reset_is_refused(sandbox: Any, bc: requests.Session) -> None:
    customers = f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers"
    listed = bc.get(customers, params={"$top": "1", "$orderby": "number"})
    seeded = listed.json()["value"][0]  # a fixture customer: seeding brings it back under the same id
    before = current_version(sandbox, "bc")

    reset_and_seed(sandbox, "bc")
    again = bc.get(f"{customers}({seeded['id']})")
    assert again.status_code == 200 and again.json()["@odata.etag"] != seeded["@odata.etag"]

    stale = bc.patch(f"{customers}({seeded['id']})", json={"displayName": "Lost update"},
                     headers={"If-Match": seeded["@odata.etag"]})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "Request_EntityChanged"
    assert bc.get(f"{customers}({seeded['id']})").json()["displayName"] == seeded["displayName"]
    assert lowest_row_version(sandbox, "bc") > before


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_row_versions_keep_increasing_across_reset(sandbox: Any, service: str) -> None:
    before = current_version(sandbox, service)
    reset_and_seed(sandbox, service)
    assert lowest_row_version(sandbox, service) > before
    reset_and_seed(sandbox, service)
    assert lowest_row_version(sandbox, service) > before


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_no_two_rows_share_a_version(sandbox: Any, service: str) -> None:
    """Rows written one by one and the org's own rows written as a block draw from one counter."""
    versions = row_versions(sandbox, service)
    assert len(versions) == len(set(versions))
    assert max(versions) <= current_version(sandbox, service)
