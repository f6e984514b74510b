"""``@odata.bind`` references: the text of a reference is read once and remembered (a batch binds the
same company and currency in every operation), the record it names is looked up every time, and a
refused text is refused every time, with the checks in the service's order."""

from __future__ import annotations

import uuid

import requests

from tests.conftest import RunningSandbox


def _contact(sandbox: RunningSandbox, dv: requests.Session) -> str:
    resp = dv.post(f"{sandbox.api}/contacts", json={"lastname": f"Bind {uuid.uuid4().hex[:6]}"})
    assert resp.status_code == 204, resp.text
    return resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def test_the_same_reference_finds_the_record_as_it_is_now(sandbox: RunningSandbox, dv: requests.Session) -> None:
    contact = _contact(sandbox, dv)
    bind = {"primarycontactid@odata.bind": f"/contacts({contact})"}
    first = dv.post(f"{sandbox.api}/accounts", json={"name": "Bound once", **bind},
                    headers={"Prefer": "return=representation"})
    assert first.status_code == 201, first.text
    assert first.json()["_primarycontactid_value"] == contact

    assert dv.delete(f"{sandbox.api}/contacts({contact})").status_code == 204
    again = dv.post(f"{sandbox.api}/accounts", json={"name": "Bound twice", **bind})
    assert again.status_code == 404, again.text
    assert contact in again.json()["error"]["message"]
    left = dv.get(f"{sandbox.api}/accounts", params={"$filter": "name eq 'Bound twice'"}).json()["value"]
    assert left == []


def test_a_refused_reference_is_refused_each_time(sandbox: RunningSandbox, dv: requests.Session) -> None:
    for body, status, fragment in (
        ({"primarycontactid@odata.bind": "/contacts(not-a-guid"}, 400, "Invalid URI in @odata.bind"),
        ({"primarycontactid@odata.bind": "/contacts(not-a-guid)"}, 400, "not a valid GUID"),
        ({"primarycontactid@odata.bind": "/nosuchset(not-a-guid)"}, 404, "nosuchset"),
    ):
        for _ in range(2):
            resp = dv.post(f"{sandbox.api}/accounts", json={"name": "Refused bind", **body})
            assert resp.status_code == status, resp.text
            assert fragment in resp.json()["error"]["message"], resp.text
