"""InsertOptionValue: options added to a choice column at run time, stored with the org's data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from mockservers.dataverse.models import DataverseBackend
from tests.conftest import RunningSandbox

PICKLIST = ("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='paymenttermscode')"
            "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options)")


def insert(dv: requests.Session, sandbox: RunningSandbox, **body: Any) -> requests.Response:
    return dv.post(f"{sandbox.api}/InsertOptionValue", json=body)


def label(text: str) -> dict[str, Any]:
    return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}


def options(dv: requests.Session, sandbox: RunningSandbox) -> dict[int, str]:
    body = dv.get(f"{sandbox.api}/{PICKLIST}").json()
    return {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in body["OptionSet"]["Options"]}


def test_an_inserted_option_is_numbered_published_and_accepted(sandbox: RunningSandbox, dv: requests.Session) -> None:
    before = options(dv, sandbox)
    resp = insert(dv, sandbox, EntityLogicalName="account", AttributeLogicalName="paymenttermscode",
                  Label=label("Net 90"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.InsertOptionValueResponse")
    value = body["NewOptionValue"]
    assert value == 100_000_000 or value > max(before)  # the default publisher's prefix
    assert options(dv, sandbox) == {**before, value: "Net 90"}
    created = dv.post(f"{sandbox.api}/accounts", json={"name": "Ninety", "paymenttermscode": value},
                      headers={"Prefer": "return=representation"})
    assert created.status_code == 201, created.text
    assert created.json()["paymenttermscode"] == value
    explicit = insert(dv, sandbox, EntityLogicalName="account", AttributeLogicalName="paymenttermscode",
                      Label=label("Net 120"), Value=value + 7)
    assert explicit.json()["NewOptionValue"] == value + 7
    assert "<Action Name=\"InsertOptionValue\">" in dv.get(f"{sandbox.api}/$metadata").text


def test_bad_insert_option_value_requests_are_refused_and_change_nothing(sandbox: RunningSandbox,
                                                                         dv: requests.Session) -> None:
    before = options(dv, sandbox)
    cases = [
        ({"EntityLogicalName": "nosuch", "AttributeLogicalName": "x", "Label": label("A")}, 404, "0x80040217"),
        ({"EntityLogicalName": "account", "AttributeLogicalName": "name", "Label": label("A")}, 400, "0x80040203"),
        ({"EntityLogicalName": "account", "AttributeLogicalName": "paymenttermscode", "Label": label("A"),
          "Value": 1}, 400, "0x80040237"),
        ({"EntityLogicalName": "account", "AttributeLogicalName": "paymenttermscode", "Label": {}}, 400, "0x80040203"),
        ({"OptionSetName": "global_set", "Label": label("A")}, 400, "0x80040315"),
    ]
    for body, status, code in cases:
        resp = insert(dv, sandbox, **body)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), (body, resp.text)
    assert dv.get(f"{sandbox.api}/InsertOptionValue").status_code == 404
    assert options(dv, sandbox) == before


def test_added_options_survive_a_restart_and_go_with_a_reset(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dv.db'}"
    backend = DataverseBackend(url)
    value = backend.insert_option_value({"EntityLogicalName": "account", "AttributeLogicalName": "paymenttermscode",
                                         "Label": label("COD")})
    backend.store.engine.dispose()
    reopened = DataverseBackend(url)
    prop = reopened.entity("account").property("paymenttermscode")
    assert prop is not None and prop.options is not None and prop.options.label(value) == "COD"
    reopened.reset()
    prop = reopened.entity("account").property("paymenttermscode")
    assert prop is not None and prop.options is not None and prop.options.label(value) is None


def test_a_new_unit_group_comes_with_its_base_unit(sandbox: RunningSandbox, dv: requests.Session) -> None:
    resp = dv.post(f"{sandbox.api}/uomschedules", json={"name": "Crates", "baseuomname": "Crate"},
                   headers={"Prefer": "return=representation"})
    assert resp.status_code == 201, resp.text
    group = resp.json()["uomscheduleid"]
    units = dv.get(f"{sandbox.api}/uoms?$filter=_uomscheduleid_value eq {group}"
                   "&$select=name,quantity,isschedulebaseuom").json()["value"]
    assert [(u["name"], u["quantity"], u["isschedulebaseuom"]) for u in units] == [("Crate", 1, True)]
