"""Apps and permissions on both services (issue 6, item 6 acceptance).

- The fixture app "Read-only Reporting" holds Dataverse's read-only security role and BC's
  `D365 READ` permission set: 200 on reads, 403 on every write, with each service's refusal
  (Dataverse `0x80040220` naming the missing `prv…` privilege; BC's "Sorry, the current
  permissions prevented the action." naming the table data and the permission), and nothing written.
- A correctly signed token of an app that is not registered in BC answers 401 there, with the same
  body as bad credentials
  (https://learn.microsoft.com/dynamics365/business-central/dev-itpro/administration/automation-apis-using-s2s-authentication).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import requests

from mockservers.dataverse.exceptions import DataverseError
from mockservers.dataverse.models import Caller
from mockservers.dataverse.security import Access, SecurityRole
from mockservers.identity import BUSINESS_CENTRAL_RESOURCE, AppRegistration, TokenIssuer, load_signing_key
from tests.conftest import RunningSandbox
from tests.hostile import batch_body, batch_parts, check_bc, check_dataverse, http_part

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "default"
READ_ONLY = next(a for a in json.loads((FIXTURES / "identity.json").read_text())["apps"]
                 if a["display_name"] == "Read-only Reporting")
READ_ONLY_USER = "5e000000-0000-4000-8000-000000000003"
ADATUM = "a0000000-0000-4000-8000-000000000001"
DENIED = re.compile(
    rf"^Principal user \(Id={READ_ONLY_USER}, type=8, roleCount=1, privilegeCount=(\d+), accessMode=4\), is missing "
    r"(prv\w+) privilege \(Id=[0-9a-f-]{36}\) on OTC=(\d+) for entity '(\w+)' \(LocalizedName='[^']*'\)\. "
    rf"context\.Caller={READ_ONLY_USER}$")


@pytest.fixture(scope="module")
def reader_dv(sandbox) -> requests.Session:
    return sandbox.session(sandbox.token(client_id=READ_ONLY["client_id"], secret=READ_ONLY["client_secret"]))


@pytest.fixture(scope="module")
def reader_bc(sandbox) -> requests.Session:
    token = sandbox.token(scope=sandbox.info["bc"]["scope"], client_id=READ_ONLY["client_id"],
                          secret=READ_ONLY["client_secret"])
    s = requests.Session()
    s.verify = sandbox.ca_bundle
    s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    return s


def assert_denied(resp: requests.Response, privilege: str, otc: int, entity: str) -> None:
    error = check_dataverse(resp)
    assert resp.status_code == 403 and error["code"] == "0x80040220", resp.text
    m = DENIED.match(error["message"])
    assert m, error["message"]
    assert (m.group(2), int(m.group(3)), m.group(4)) == (privilege, otc, entity)


# -- Dataverse -------------------------------------------------------------------------------------
def test_dataverse_read_only_app_reads(sandbox, reader_dv: requests.Session) -> None:
    assert reader_dv.get(f"{sandbox.api}/accounts", params={"$top": "2"}).status_code == 200
    assert reader_dv.get(f"{sandbox.api}/accounts({ADATUM})").status_code == 200
    assert reader_dv.get(f"{sandbox.api}/contacts/$count").status_code == 200
    who = reader_dv.get(f"{sandbox.api}/WhoAmI")
    assert who.status_code == 200 and who.json()["UserId"] == READ_ONLY_USER


@pytest.mark.parametrize(("method", "path", "body", "privilege", "otc", "entity"), [
    ("POST", "accounts", {"name": "{mark}"}, "prvCreateAccount", 1, "account"),
    ("POST", "contacts", {"lastname": "{mark}"}, "prvCreateContact", 2, "contact"),
    ("PATCH", f"accounts({ADATUM})", {"name": "{mark}"}, "prvWriteAccount", 1, "account"),
    ("PATCH", f"accounts({uuid.uuid4()})", {"name": "{mark}"}, "prvCreateAccount", 1, "account"),
    ("PUT", f"accounts({ADATUM})/name", {"value": "{mark}"}, "prvWriteAccount", 1, "account"),
    ("DELETE", f"accounts({ADATUM})", None, "prvDeleteAccount", 1, "account"),
    ("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
     {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "{mark}"}]}, "prvCreateAccount", 1,
     "account"),
    ("POST", "products", {"name": "{mark}", "productnumber": "{mark}"}, "prvCreateProduct", 1024, "product"),
], ids=["create", "create-contact", "update", "upsert-create", "put-property", "delete", "create-multiple",
        "create-product"])
def test_dataverse_read_only_app_gets_403_naming_the_privilege(sandbox, dv, reader_dv, method, path, body,
                                                                privilege, otc, entity) -> None:
    mark = f"RO-{uuid.uuid4().hex[:8]}"
    before = dv.get(f"{sandbox.api}/accounts({ADATUM})").json()
    payload = json.loads(json.dumps(body).replace("{mark}", mark)) if body is not None else None
    resp = reader_dv.request(method, f"{sandbox.api}/{path}", json=payload)

    assert_denied(resp, privilege, otc, entity)
    after = dv.get(f"{sandbox.api}/accounts({ADATUM})").json()
    assert after["@odata.etag"] == before["@odata.etag"], "the account is unchanged"
    for set_name, column in (("accounts", "name"), ("contacts", "lastname"), ("products", "name")):
        found = dv.get(f"{sandbox.api}/{set_name}", params={"$filter": f"{column} eq '{mark}'"}).json()["value"]
        assert found == [], f"no {set_name} row was written"


def test_dataverse_privileges_are_checked_per_table_written(sandbox, dv) -> None:
    """A role that may create accounts but not contacts: a deep insert of a primary contact is refused
    for the contact, and the account is rolled back with it."""
    backend = sandbox.sandbox.backends["dataverse"]
    role = SecurityRole("Account Clerk", str(uuid.uuid4()), {"account": frozenset({"Create", "Read"})})
    caller = Caller(READ_ONLY_USER, None, Access(READ_ONLY_USER, (role,), access_mode=4))
    mark = f"DEEP-{uuid.uuid4().hex[:8]}"
    with pytest.raises(DataverseError) as refused, backend.store.write() as conn:
        backend.create(conn, backend.entity("account"), {"name": mark, "primarycontactid": {"lastname": mark}},
                       caller=caller)

    assert refused.value.status == 403 and "is missing prvCreateContact privilege" in refused.value.message
    assert dv.get(f"{sandbox.api}/accounts", params={"$filter": f"name eq '{mark}'"}).json()["value"] == []


def test_dataverse_read_only_app_in_a_batch(sandbox, reader_dv) -> None:
    body, content_type = batch_body([http_part("GET /api/data/v9.2/accounts?$top=1&$select=name"),
                                     http_part("POST /api/data/v9.2/accounts", json.dumps({"name": "batch"}))])
    resp = reader_dv.post(f"{sandbox.api}/$batch", data=body,
                          headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"})

    assert resp.status_code == 200, resp.text
    (read, _, _), (write, _, write_body) = batch_parts(resp)
    assert read == 200
    assert write == 403 and json.loads(write_body)["error"]["code"] == "0x80040220"


# -- Business Central ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def company(sandbox) -> str:
    return f"{sandbox.bc_api}/companies({sandbox.companies[0]})"


def test_bc_read_only_app_reads(company: str, reader_bc: requests.Session) -> None:
    resp = reader_bc.get(f"{company}/customers", params={"$top": "2"})
    assert resp.status_code == 200 and len(resp.json()["value"]) == 2
    assert reader_bc.get(f"{company}/items/$count").status_code == 200


@pytest.mark.parametrize(("method", "set_name", "body", "permission", "table"), [
    ("POST", "customers", {"displayName": "{mark}"}, "Insert", "Customer"),
    ("POST", "items", {"displayName": "{mark}"}, "Insert", "Item"),
    ("PATCH", "customers({probe})", {"displayName": "{mark}"}, "Modify", "Customer"),
    ("DELETE", "customers({probe})", None, "Delete", "Customer"),
], ids=["insert", "insert-item", "modify", "delete"])
def test_bc_read_only_app_gets_403(bc, company: str, reader_bc, method, set_name, body, permission, table) -> None:
    probe = bc.post(f"{company}/customers", json={"displayName": "Permission Probe"}).json()
    mark = f"RO-{uuid.uuid4().hex[:8]}"
    payload = json.loads(json.dumps(body).replace("{mark}", mark)) if body is not None else None
    resp = reader_bc.request(method, f"{company}/{set_name.replace('{probe}', probe['id'])}", json=payload,
                             headers={"If-Match": "*"})

    error = check_bc(resp)
    assert resp.status_code == 403 and error["code"] == "Internal_ServerError", resp.text
    assert error["message"].startswith("Sorry, the current permissions prevented the action. "
                                       f"(TableData {table} {permission}: Base Application)")
    still = bc.get(f"{company}/customers({probe['id']})")
    assert still.status_code == 200 and still.json()["@odata.etag"] == probe["@odata.etag"]
    assert bc.get(f"{company}/customers", params={"$filter": f"displayName eq '{mark}'"}).json()["value"] == []


def test_bc_read_only_app_in_a_batch(sandbox, reader_bc) -> None:
    scoped = f"companies({sandbox.companies[0]})/customers"
    resp = reader_bc.post(f"{sandbox.bc_api}/$batch", json={"requests": [
        {"id": "r", "method": "GET", "url": f"{scoped}?$top=1"},
        {"id": "w", "method": "POST", "url": scoped, "body": {"displayName": "Batch by reader"}}]})

    assert resp.status_code == 200
    assert {i["id"]: i["status"] for i in resp.json()["responses"]} == {"r": 200, "w": 403}


def unregistered_token(sandbox) -> str:
    """A token the sandbox's own identity key signs, for an app BC has never heard of."""
    issuer = TokenIssuer(load_signing_key(sandbox.data_dir), public_url=sandbox.info["identity"]["url"])
    app = AppRegistration(client_id=str(uuid.uuid4()), client_secret="unused", display_name="Unregistered",
                          object_id=str(uuid.uuid4()), roles=("API.ReadWrite.All",))
    token, _ = issuer.issue(app, BUSINESS_CENTRAL_RESOURCE, sandbox.info["tenant_id"])
    return token


def test_bc_unregistered_app_gets_401(sandbox, company: str) -> None:
    resp = requests.get(f"{company}/customers", headers={"Authorization": f"Bearer {unregistered_token(sandbox)}"},
                        verify=sandbox.ca_bundle, timeout=10)

    error = check_bc(resp)
    assert resp.status_code == 401 and error["code"] == "Authentication_InvalidCredentials"
    assert error["message"].startswith("The server has rejected the client credentials.")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_bc_registered_apps_get_in(sandbox, company: str, reader_bc) -> None:
    """The control: the same kind of token for a registered app is accepted."""
    assert sandbox.bc_session().get(f"{company}/customers", params={"$top": "1"}).status_code == 200
    assert reader_bc.get(f"{company}/customers", params={"$top": "1"}).status_code == 200


def test_an_admin_app_may_act_on_behalf_of_a_user_and_the_row_says_who_changed_it(
        sandbox: RunningSandbox, dv: requests.Session) -> None:
    jordan = "5e000000-0000-4000-8000-000000000004"
    created = dv.post(f"{sandbox.api}/accounts", json={"name": "On Behalf"}, headers={
        "MSCRMCallerID": jordan, "Prefer": "return=representation"})
    assert created.status_code == 201, created.text
    assert created.json()["_modifiedby_value"] == created.json()["_createdby_value"] == jordan
    by_object = dv.patch(f"{sandbox.api}/accounts({created.json()['accountid']})", json={"telephone1": "1"},
                         headers={"CallerObjectId": "41d5c2a7-0b3e-4f19-8c6d-2a7e9f1b3c50"})  # the sandbox admin
    assert by_object.status_code == 204
    row = dv.get(f"{sandbox.api}/accounts({created.json()['accountid']})").json()
    assert row["_modifiedby_value"] == "5e000000-0000-4000-8000-000000000001"
    missing = dv.get(f"{sandbox.api}/accounts?$top=1", headers={"MSCRMCallerID": "5e000000-0000-4000-8000-00000000beef"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "0x80040217"


def test_impersonation_needs_the_act_on_behalf_privilege(sandbox: RunningSandbox, reader_dv: requests.Session) -> None:
    resp = reader_dv.get(f"{sandbox.api}/accounts?$top=1",
                         headers={"MSCRMCallerID": "5e000000-0000-4000-8000-000000000004"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "0x80040220"
    assert "is missing prvActOnBehalfOfAnotherUser privilege" in resp.json()["error"]["message"]
