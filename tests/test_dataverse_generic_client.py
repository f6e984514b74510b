"""A generic OData v4 client (python-odata) builds its model from our `$metadata` and queries with it."""

from __future__ import annotations

from odata import ODataService


def test_generic_client_reflects_metadata_and_queries(sandbox, dv):
    service = ODataService(sandbox.api + "/", reflect_entities=True, session=dv, quiet_progress=True)

    assert {"accounts", "contacts", "products", "systemusers", "bcbi_companies"} <= set(service.entities)
    Account = service.entities["accounts"]

    found = list(service.query(Account).filter(Account.name == "Adatum Corporation"))
    assert [a.name for a in found] == ["Adatum Corporation"]

    expected = dv.get(f"{sandbox.api}/accounts/$count").content.decode("utf-8-sig")
    assert len(list(service.query(Account))) == int(expected)


def test_generic_client_sees_lookups_and_navigations(sandbox, dv):
    service = ODataService(sandbox.api + "/", reflect_entities=True, session=dv, quiet_progress=True)
    Contact = service.entities["contacts"]

    contact = next(iter(service.query(Contact).filter(Contact.fullname != None)))  # noqa: E711 - OData null
    raw = dv.get(f"{sandbox.api}/contacts({contact.contactid})").json()
    assert raw["fullname"] == contact.fullname
    assert "_parentcustomerid_value" in raw
