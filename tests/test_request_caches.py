"""What the services remember between requests (a token's verified signature, the caller's application
user) never outlives what it was taken from: expiry on the clock, a changed or removed user."""

from __future__ import annotations

import pytest

from mockservers.odata.storage import Store
from mockservers.testing import RunningSandbox

APP_USER = "5e000000-0000-4000-8000-000000000002"  # the integration app's application user


def test_a_remembered_token_still_expires_on_the_clock(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dv, bc = sb.session(), sb.bc_session()
    for _ in range(3):  # verified once, then remembered
        assert dv.get(f"{sb.api}/WhoAmI").status_code == 200
        assert bc.get(f"{sb.bc_api}/companies").status_code == 200
    sb.clock.advance(seconds=3599 + 31)
    assert dv.get(f"{sb.api}/WhoAmI").status_code == 401
    assert bc.get(f"{sb.bc_api}/companies").status_code == 401


def test_a_remembered_token_is_still_refused_by_the_other_service(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dataverse_token = sb.token()
    assert sb.session(dataverse_token).get(f"{sb.api}/WhoAmI").status_code == 200
    assert sb.bc_session(dataverse_token).get(f"{sb.bc_api}/companies").status_code == 401


def test_an_application_user_that_is_removed_is_refused_at_once(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dv = sb.session()
    assert dv.get(f"{sb.api}/WhoAmI").json()["UserId"] == APP_USER  # the caller is remembered now
    ids = dv.get(f"{sb.api}/systemusers({APP_USER})?$select=applicationid,azureactivedirectoryobjectid").json()

    admin = sb.session()  # a second session of the same app, used before the change
    removed = admin.patch(f"{sb.api}/systemusers({APP_USER})", headers={"If-Match": "*"},
                          json={"applicationid": None, "azureactivedirectoryobjectid": None})
    assert removed.status_code == 204
    refused = dv.get(f"{sb.api}/WhoAmI")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "0x80072560"

    backend = sb.sandbox.backends["dataverse"]  # the app cannot act any more: restored behind its back
    with backend.store.write() as conn:
        backend.update(conn, backend.entity("systemuser"), APP_USER,
                       {"applicationid": ids["applicationid"], "azureactivedirectoryobjectid": ids["azureactivedirectoryobjectid"]},
                       caller=backend.system_caller(conn))
    assert dv.get(f"{sb.api}/WhoAmI").json()["UserId"] == APP_USER


def test_store_generations_change_when_a_write_starts_and_ends(tmp_path) -> None:
    from mockservers.dataverse.tables import build_schema

    schema = build_schema({})
    store = Store(schema, f"sqlite:///{tmp_path / 'g.db'}")
    account = schema.entity("account")
    assert account is not None
    before = store.generation("account")
    with store.read() as conn:
        store.count(conn, account)
    assert store.generation("account") == before  # reads change nothing
    with store.write() as conn:
        store.insert(conn, account, {"accountid": "a1000000-0000-4000-8000-000000000001", "name": "G"})
        during = store.generation("account")
        assert during != before
    after = store.generation("account")
    assert after != during  # a value cached mid-write is stale once the write is over
    assert store.generation("contact") == 0
    with pytest.raises(RuntimeError), store.write() as conn:
        store.insert(conn, account, {"accountid": "a1000000-0000-4000-8000-000000000002", "name": "H"})
        raise RuntimeError("rolled back")
    assert store.generation("account") != after
    store.engine.dispose()
