"""Dataverse queries over real HTTPS against the seeded org (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/overview).

Expected results never come from the code under test: each case reads the table straight from the
SQL store and applies an independent Python predicate, ordering or grouping to those rows.
Comparisons follow SQL semantics as Dataverse does (`ne`/`not`/`NotIn` never match a null column).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import requests
from odata_query import ast

from mockservers.odata.filter import parse_filter

pytestmark = pytest.mark.storage

USD = "cc000000-0000-4000-8000-000000000001"
ADATUM = "a0000000-0000-4000-8000-000000000001"
COMPANY = "bc000000-0000-4000-8000-000000000001"
FORMATTED = "@OData.Community.Display.V1.FormattedValue"
LOGICAL = "@Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION = "@Microsoft.Dynamics.CRM.associatednavigationproperty"

Row = dict[str, Any]



def store_rows(sandbox, table: str) -> list[Row]:
    """Every row of a table, read with plain SQL from the sandbox's store."""
    backend = sandbox.sandbox.backends["dataverse"]
    sql_table = backend.store.table(backend.entity(table))
    with backend.store.read() as conn:
        return [dict(r) for r in conn.execute(sql_table.select()).mappings()]


@pytest.fixture(scope="module")
def primary_contacts(sandbox) -> dict[str, str]:
    """The seed's primary contacts (every active account has one): account -> contact."""
    pairs = {a["accountid"]: a["_primarycontactid_value"] for a in store_rows(sandbox, "account")
             if a["_primarycontactid_value"]}
    assert pairs
    return pairs


def query(dv: requests.Session, url: str, params: dict[str, str] | None = None, **headers: str) -> dict:
    resp = dv.get(url, params=params, headers=headers or None)
    assert resp.status_code == 200, resp.text
    return resp.json()


def all_pages(dv: requests.Session, url: str, params: dict[str, str], prefer: str | None = None) -> list[Row]:
    headers = {"Prefer": prefer} if prefer else {}
    body = query(dv, url, params, **headers)
    rows = list(body["value"])
    while "@odata.nextLink" in body:
        body = query(dv, body["@odata.nextLink"], None, **headers)
        rows.extend(body["value"])
    return rows


# -- $filter, table-driven -------------------------------------------------------------------------
def _ci(value: Any) -> str:
    return (value or "").lower()


def _today() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)


FilterCase = tuple[str, str, str, dict[str, str], Callable[[Row, Any], bool]]
# (id, entity, $filter, extra query params, predicate(row, context))

FILTER_CASES: list[FilterCase] = [
    ("eq", "account", "customertypecode eq 3", {}, lambda r, c: r["customertypecode"] == 3),
    ("ne excludes nulls", "account", "customertypecode ne 3", {},
     lambda r, c: r["customertypecode"] is not None and r["customertypecode"] != 3),
    ("gt", "account", "numberofemployees gt 100", {},
     lambda r, c: r["numberofemployees"] is not None and r["numberofemployees"] > 100),
    ("lt", "account", "numberofemployees lt 1200", {},
     lambda r, c: r["numberofemployees"] is not None and r["numberofemployees"] < 1200),
    ("ge decimal", "account", "creditlimit ge 50000", {},
     lambda r, c: r["creditlimit"] is not None and r["creditlimit"] >= Decimal(50000)),
    ("and", "account", "statecode eq 0 and customertypecode eq 11", {},
     lambda r, c: r["statecode"] == 0 and r["customertypecode"] == 11),
    ("or", "account", "customertypecode eq 2 or customertypecode eq 8", {},
     lambda r, c: r["customertypecode"] in (2, 8)),
    ("not", "account", "not startswith(name, 'c')", {}, lambda r, c: not _ci(r["name"]).startswith("c")),
    ("nested parentheses", "account", "(customertypecode eq 3 and (contains(name,'inc') or contains(name,'ltd')))",
     {}, lambda r, c: r["customertypecode"] == 3 and ("inc" in _ci(r["name"]) or "ltd" in _ci(r["name"]))),
    ("contains", "account", "contains(name, 'toy')", {}, lambda r, c: "toy" in _ci(r["name"])),
    ("startswith", "account", "startswith(name, 'contoso')", {}, lambda r, c: _ci(r["name"]).startswith("contoso")),
    ("endswith", "account", "endswith(emailaddress1, '.example.com')", {},
     lambda r, c: _ci(r["emailaddress1"]).endswith(".example.com")),
    ("eq is case-insensitive", "account", "name eq 'TREY RESEARCH'", {}, lambda r, c: _ci(r["name"]) == "trey research"),
    ("eq lower-case literal", "account", "name eq 'northwind traders'", {},
     lambda r, c: _ci(r["name"]) == "northwind traders"),
    ("quote doubling", "account", "name eq 'Margie''s Travel'", {}, lambda r, c: r["name"] == "Margie's Travel"),
    ("eq null", "account", "_primarycontactid_value eq null", {}, lambda r, c: r["_primarycontactid_value"] is None),
    ("ne null", "account", "numberofemployees ne null", {}, lambda r, c: r["numberofemployees"] is not None),
    ("guid upper-case", "account", f"_transactioncurrencyid_value eq {USD.upper()}", {},
     lambda r, c: r["_transactioncurrencyid_value"] == USD),
    ("guid key upper-case", "account", f"accountid eq {ADATUM.upper()}", {}, lambda r, c: r["accountid"] == ADATUM),
    ("guid lookup on contacts", "contact", f"_bcbi_companyid_value eq {COMPANY.upper()}", {},
     lambda r, c: r["_bcbi_companyid_value"] == COMPANY),
    ("column to column", "contact", "firstname eq lastname", {},
     lambda r, c: r["firstname"] is not None and _ci(r["firstname"]) == _ci(r["lastname"])),
    ("datetime Z", "account", "createdon le {max_modified_z}", {},
     lambda r, c: r["createdon"] <= c["max_modified"]),
    ("datetime with +05:00 offset", "account", "modifiedon gt {max_modified_plus5}", {},
     lambda r, c: r["modifiedon"] > c["max_modified"]),
    ("datetime with -08:00 offset", "account", "modifiedon le {max_modified_minus8}", {},
     lambda r, c: r["modifiedon"] <= c["max_modified"]),
    ("navigation path", "account", "primarycontactid/fullname eq '{first_contact_name}'", {},
     lambda r, c: r["_primarycontactid_value"] in c["contacts_named_first"]),
    ("navigation path not null", "account", "primarycontactid/fullname ne null", {},
     lambda r, c: r["_primarycontactid_value"] in c["contacts_with_name"]),
    ("navigation path on a polymorphic lookup", "contact", "parentcustomerid_account/name eq 'Adatum Corporation'",
     {}, lambda r, c: r["parentcustomerid_type"] == "account" and r["_parentcustomerid_value"] in c["adatum_ids"]),
    ("lambda any with predicate", "account", "contact_customer_accounts/any(x: x/jobtitle eq 'buyer')", {},
     lambda r, c: r["accountid"] in c["accounts_with_buyer"]),
    ("lambda any without predicate", "account", "contact_customer_accounts/any()", {},
     lambda r, c: r["accountid"] in c["accounts_with_contacts"]),
    ("In", "account", "Microsoft.Dynamics.CRM.In(PropertyName='customertypecode',PropertyValues=[\"2\",\"11\"])", {},
     lambda r, c: r["customertypecode"] in (2, 11)),
    ("In on strings", "account",
     "Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=[\"Coho Winery\",\"margie's travel\"])", {},
     lambda r, c: _ci(r["name"]) in ("coho winery", "margie's travel")),
    ("NotIn", "account", "Microsoft.Dynamics.CRM.NotIn(PropertyName='customertypecode',PropertyValues=[\"3\"])", {},
     lambda r, c: r["customertypecode"] is not None and r["customertypecode"] != 3),
    ("Between", "account",
     "Microsoft.Dynamics.CRM.Between(PropertyName='numberofemployees',PropertyValues=[\"100\",\"1200\"])", {},
     lambda r, c: r["numberofemployees"] is not None and 100 <= r["numberofemployees"] <= 1200),
    ("NotBetween", "account",
     "Microsoft.Dynamics.CRM.NotBetween(PropertyName='numberofemployees',PropertyValues=[\"100\",\"1200\"])", {},
     lambda r, c: r["numberofemployees"] is not None and not 100 <= r["numberofemployees"] <= 1200),
    ("query function combined", "account",
     "statecode eq 0 and Microsoft.Dynamics.CRM.In(PropertyName='customertypecode',PropertyValues=[\"8\"])", {},
     lambda r, c: r["statecode"] == 0 and r["customertypecode"] == 8),
    ("LastXDays", "account", "Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=1)", {},
     lambda r, c: _today() - timedelta(days=1) <= r["createdon"]),
    ("Today", "account", "Microsoft.Dynamics.CRM.Today(PropertyName='modifiedon')", {},
     lambda r, c: _today() <= r["modifiedon"] < _today() + timedelta(days=1)),
    ("Yesterday", "account", "Microsoft.Dynamics.CRM.Yesterday(PropertyName='createdon')", {},
     lambda r, c: _today() - timedelta(days=1) <= r["createdon"] < _today()),
    ("OlderThanXDays", "account", "Microsoft.Dynamics.CRM.OlderThanXDays(PropertyName='createdon',PropertyValue=3)",
     {}, lambda r, c: r["createdon"] < _today() - timedelta(days=3)),
    ("alias in a comparison", "account", "customertypecode eq @p1", {"@p1": "11"},
     lambda r, c: r["customertypecode"] == 11),
    ("alias string", "account", "name eq @name", {"@name": "'Coho Winery'"}, lambda r, c: r["name"] == "Coho Winery"),
    ("aliases in a query function", "account", "Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)",
     {"@p1": "'customertypecode'", "@p2": '["5","8"]'}, lambda r, c: r["customertypecode"] in (5, 8)),
    ("alias in LastXHours", "account", "Microsoft.Dynamics.CRM.LastXHours(PropertyName=@p1,PropertyValue=@p2)",
     {"@p1": "'modifiedon'", "@p2": "12"},
     lambda r, c: r["modifiedon"] >= datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=12, minutes=1)),
    ("query function inside a lambda", "account",
     "contact_customer_accounts/any(c: Microsoft.Dynamics.CRM.In(PropertyName='jobtitle',PropertyValues=[\"Buyer\"]))",
     {}, lambda r, c: r["accountid"] in c["accounts_with_buyer"]),
    ("Between with an alias for the array", "account",
     "Microsoft.Dynamics.CRM.Between(PropertyName='numberofemployees',PropertyValues=@range)",
     {"@range": '["100","1200"]'},
     lambda r, c: r["numberofemployees"] is not None and 100 <= r["numberofemployees"] <= 1200),
    ("EqualUserId by the lookup's column name", "account", "Microsoft.Dynamics.CRM.NotEqualUserId(PropertyName='ownerid')",
     {}, lambda r, c: r["_ownerid_value"] is not None and r["_ownerid_value"] != c["caller_id"]),
    ("products by type", "product", "producttypecode eq 1 and price gt 100", {},
     lambda r, c: r["producttypecode"] == 1 and r["price"] is not None and r["price"] > 100),
]


@pytest.fixture(scope="module")
def filter_context(sandbox, dv: requests.Session, primary_contacts: dict[str, str]) -> dict[str, Any]:
    """Values the table's filters refer to, derived from the store (and one fresh update)."""
    time.sleep(0.01)
    # One account modified after everything else, so a timestamp filter splits the table.
    resp = dv.patch(f"{sandbox.api}/accounts({ADATUM})", json={"telephone2": "555-0000"})
    assert resp.status_code == 204
    accounts = store_rows(sandbox, "account")
    contacts = store_rows(sandbox, "contact")
    max_modified = sorted(r["modifiedon"] for r in accounts)[-2]  # the newest before the update
    utc = max_modified.replace(tzinfo=UTC)
    plus5 = utc.astimezone(timezone(timedelta(hours=5)))
    minus8 = utc.astimezone(timezone(timedelta(hours=-8)))
    by_id = {c["contactid"]: c for c in contacts}
    first_contact = by_id[next(iter(primary_contacts.values()))]
    buyer_accounts = {c["_parentcustomerid_value"] for c in contacts
                      if c["parentcustomerid_type"] == "account" and _ci(c["jobtitle"]) == "buyer"}
    caller = dv.get(f"{sandbox.api}/WhoAmI").json()["UserId"]
    return {
        "caller_id": caller,
        "max_modified": max_modified,
        "max_modified_z": utc.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "max_modified_plus5": plus5.isoformat(timespec="milliseconds"),
        "max_modified_minus8": minus8.isoformat(timespec="milliseconds"),
        "first_contact_name": first_contact["fullname"],
        "contacts_named_first": {k for k, c in by_id.items() if _ci(c["fullname"]) == _ci(first_contact["fullname"])},
        "contacts_with_name": {k for k, c in by_id.items() if c["fullname"] is not None},
        "adatum_ids": {a["accountid"] for a in accounts if _ci(a["name"]) == "adatum corporation"},
        "accounts_with_buyer": buyer_accounts,
        "accounts_with_contacts": {c["_parentcustomerid_value"] for c in contacts
                                   if c["parentcustomerid_type"] == "account"},
    }


@pytest.mark.parametrize(("entity", "expression", "aliases", "predicate"),
                         [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES])
def test_filter(sandbox, dv: requests.Session, filter_context: dict[str, Any], entity: str, expression: str,
                aliases: dict[str, str], predicate: Callable[[Row, Any], bool]) -> None:
    backend = sandbox.sandbox.backends["dataverse"]
    declared = backend.entity(entity)
    text = expression
    for name, value in filter_context.items():
        if isinstance(value, str):
            text = text.replace("{" + name + "}", value)

    def check() -> None:
        body = query(dv, f"{sandbox.api}/{declared.set_name}",
                     {"$select": declared.key, "$filter": text, "$count": "true", **aliases})
        expected = sorted(r[declared.key] for r in store_rows(sandbox, entity) if predicate(r, filter_context))
        got = sorted(r[declared.key] for r in body["value"])
        assert got == expected
        assert body["@odata.count"] == len(expected)

    on_one_utc_day(check)


def on_one_utc_day(check: Callable[[], None]) -> None:
    """Run a check whose expectation may depend on today's UTC date (Today, Yesterday, LastXDays, …).

    The server evaluates "today" when it answers, the test when it predicts; if UTC midnight passed in
    between they may disagree, so a failure on a changed date runs the check once more (it cannot
    straddle two midnights). A failure within one UTC day fails as it should.
    """
    day = _today()
    try:
        check()
    except AssertionError:
        if _today() == day:
            raise
        check()


def test_filter_table_is_discriminating(sandbox, filter_context: dict[str, Any]) -> None:
    """Guard against vacuous cases: most filters must match some rows and miss others."""
    accounts = store_rows(sandbox, "account")
    split = [c for c in FILTER_CASES if c[1] == "account"
             and 0 < sum(c[4](r, filter_context) for r in accounts) < len(accounts)]
    assert len(split) >= 25
    newer = next(c[4] for c in FILTER_CASES if c[0] == "datetime with +05:00 offset")
    assert sum(newer(r, filter_context) for r in accounts) == 1, "exactly one account is newer than the timestamp"


@pytest.mark.parametrize(("text", "name", "literal"), [
    ("allowemail eq true", "allowemail", ast.Boolean),
    ("nullable eq null", "nullable", ast.Null),
    ("trueorfalse eq false", "trueorfalse", ast.Boolean),
    ("falsehood ne true", "falsehood", ast.Boolean),
    ("anyone eq 1", "anyone", ast.Integer),
    ("allowed eq 'x'", "allowed", ast.String),
])
def test_keyword_prefixed_names_lex_as_identifiers(text: str, name: str, literal: type) -> None:
    """No seeded column starts with null/true/false/any/all, so the lexer fix is checked directly."""
    tree = parse_filter(text)
    assert isinstance(tree, ast.Compare)
    assert tree.left == ast.Identifier(name)
    assert isinstance(tree.right, literal)


def test_keyword_prefixed_unknown_column_is_a_property_error(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/accounts", params={"$filter": "nullcount eq null"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        "Could not find a property named 'nullcount' on type 'Microsoft.Dynamics.CRM.account'.")


@pytest.mark.parametrize("expression", [
    "not Microsoft.Dynamics.CRM.In(PropertyName='customertypecode',PropertyValues=[\"3\"])",
    "not (statecode eq 0 and Microsoft.Dynamics.CRM.Today(PropertyName='createdon'))",
])
def test_not_cannot_wrap_a_query_function(sandbox, dv: requests.Session, expression: str) -> None:
    resp = dv.get(f"{sandbox.api}/accounts", params={"$filter": expression})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        "Not operator along with the Custom Named Condition operators is not allowed")


# -- $select, $orderby, $top, $count ---------------------------------------------------------------
@pytest.mark.parametrize(("select", "expected"), [
    ("name", {"accountid", "name"}),
    ("name,accountnumber", {"accountid", "name", "accountnumber"}),
    ("creditlimit", {"accountid", "creditlimit", "_transactioncurrencyid_value"}),
    ("address1_line1", {"accountid", "address1_line1", "address1_composite"}),
    ("accountid", {"accountid"}),
    ("_primarycontactid_value", {"accountid", "_primarycontactid_value"}),
])
def test_select_returns_the_key_and_implied_columns(sandbox, dv: requests.Session, select: str,
                                                    expected: set[str]) -> None:
    body = query(dv, f"{sandbox.api}/accounts({ADATUM})", {"$select": select})
    assert set(body) - {"@odata.context", "@odata.etag"} == expected
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#accounts({select})/$entity"
    listed = query(dv, f"{sandbox.api}/accounts", {"$select": select, "$top": "3"})
    assert all(set(r) - {"@odata.etag"} == expected for r in listed["value"])


def test_no_select_returns_every_public_column(sandbox, dv: requests.Session) -> None:
    body = query(dv, f"{sandbox.api}/accounts({ADATUM})")
    declared = sandbox.sandbox.backends["dataverse"].entity("account")
    assert set(body) - {"@odata.context", "@odata.etag"} == {p.name for p in declared.public_properties()}
    assert "parentcustomerid_type" not in body and "ownerid_type" not in body


def test_orderby_multiple_keys(sandbox, dv: requests.Session) -> None:
    rows = [r for r in store_rows(sandbox, "account") if r["customertypecode"] is not None]
    expected = [r["accountid"] for r in sorted(rows, key=lambda r: (-r["customertypecode"], _ci(r["name"]),
                                                                     r["accountid"]))]
    body = query(dv, f"{sandbox.api}/accounts", {"$select": "name,customertypecode",
                                                 "$filter": "customertypecode ne null",
                                                 "$orderby": "customertypecode desc,name asc"})
    assert [r["accountid"] for r in body["value"]] == expected


def test_orderby_with_a_parameter_alias(sandbox, dv: requests.Session) -> None:
    rows = store_rows(sandbox, "product")
    expected = [r["productid"] for r in sorted(rows, key=lambda r: (-r["price"], r["productid"]))]
    body = query(dv, f"{sandbox.api}/products", {"$select": "price", "$orderby": "@p1 desc", "@p1": "price"})
    assert [r["productid"] for r in body["value"]] == expected


def test_top_and_count(sandbox, dv: requests.Session) -> None:
    total = len([r for r in store_rows(sandbox, "account") if r["customertypecode"] == 3])
    body = query(dv, f"{sandbox.api}/accounts", {"$select": "name", "$filter": "customertypecode eq 3",
                                                 "$top": "5", "$count": "true", "$orderby": "name"})
    assert len(body["value"]) == 5
    assert body["@odata.count"] == total > 5
    assert "@odata.nextLink" not in body
    assert list(body)[:2] == ["@odata.context", "@odata.count"]
    no_count = query(dv, f"{sandbox.api}/accounts", {"$select": "name", "$top": "2"})
    assert "@odata.count" not in no_count
    count_path = dv.get(f"{sandbox.api}/contacts/$count")
    assert count_path.status_code == 200
    assert int(count_path.content.decode("utf-8-sig")) == len(store_rows(sandbox, "contact"))


# -- $expand ---------------------------------------------------------------------------------------
def test_expand_single_valued(sandbox, dv: requests.Session, primary_contacts: dict[str, str]) -> None:
    contacts = {c["contactid"]: c for c in store_rows(sandbox, "contact")}
    body = query(dv, f"{sandbox.api}/accounts", {"$select": "name",
                                                 "$expand": "primarycontactid($select=fullname,emailaddress1)"})
    assert body["@odata.context"] == \
        f"{sandbox.api}/$metadata#accounts(name,primarycontactid(fullname,emailaddress1))"
    seen = 0
    for account in body["value"]:
        expanded = account["primarycontactid"]
        contact = primary_contacts.get(account["accountid"])
        if contact is None:
            assert expanded is None
            continue
        seen += 1
        assert expanded["contactid"] == contact
        assert expanded["fullname"] == contacts[contact]["fullname"]
        assert expanded["emailaddress1"] == contacts[contact]["emailaddress1"]
        assert set(expanded) - {"@odata.etag"} == {"contactid", "fullname", "emailaddress1"}
    assert seen == len(primary_contacts) > 0


def test_expand_collection_with_nested_options(sandbox, dv: requests.Session) -> None:
    contacts = [c for c in store_rows(sandbox, "contact") if c["parentcustomerid_type"] == "account"]
    body = query(dv, f"{sandbox.api}/accounts", {
        "$select": "name",
        "$filter": "contact_customer_accounts/any()",
        "$expand": "contact_customer_accounts($select=lastname,jobtitle;$filter=statecode eq 0;"
                   "$orderby=lastname desc;$top=2)",
    })
    assert body["value"]
    for account in body["value"]:
        mine = [c for c in contacts if c["_parentcustomerid_value"] == account["accountid"] and c["statecode"] == 0]
        # lastname descending; ties keep the primary key ascending (the server's stable order)
        expected = [c["contactid"] for c in sorted(
            sorted(mine, key=lambda c: c["contactid"]), key=lambda c: _ci(c["lastname"]), reverse=True)][:2]
        got = account["contact_customer_accounts"]
        assert [c["contactid"] for c in got] == expected
        assert all(set(c) - {"@odata.etag"} == {"contactid", "lastname", "jobtitle"} for c in got)


def test_expand_on_a_single_record_and_nested_expand(sandbox, dv: requests.Session,
                                                     primary_contacts: dict[str, str]) -> None:
    account = next(iter(primary_contacts))
    body = query(dv, f"{sandbox.api}/accounts({account})", {
        "$select": "name", "$expand": "primarycontactid($select=fullname;$expand=transactioncurrencyid($select="
                                      "isocurrencycode)),transactioncurrencyid($select=currencyname)"})
    assert body["primarycontactid"]["contactid"] == primary_contacts[account]
    assert body["primarycontactid"]["transactioncurrencyid"]["isocurrencycode"] == "USD"
    assert body["transactioncurrencyid"]["currencyname"] == "US Dollar"


# -- paging ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("set_name", "params"), [
    ("contacts", {"$select": "fullname"}),
    ("accounts", {"$select": "name,customertypecode", "$filter": "statecode eq 0", "$orderby": "name desc"}),
    ("products", {}),
])
def test_paging_visits_every_row_once(sandbox, dv: requests.Session, set_name: str, params: dict[str, str]) -> None:
    backend = sandbox.sandbox.backends["dataverse"]
    entity = backend.schema.by_set(set_name)
    expected = {r[entity.key] for r in store_rows(sandbox, entity.name) if "$filter" not in params
                or r["statecode"] == 0}
    prefer = {"Prefer": "odata.maxpagesize=7"}
    resp = dv.get(f"{sandbox.api}/{set_name}", params=params, headers=prefer)
    pages = []
    while True:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Preference-Applied"] == "odata.maxpagesize=7"
        body = resp.json()
        pages.append([r[entity.key] for r in body["value"]])
        link = body.get("@odata.nextLink")
        if link is None:
            break
        assert link.startswith(f"{sandbox.api}/{set_name}?") and "$skiptoken=" in link
        for name in params:
            assert f"{name}=" in link, f"the next link must keep {name}"
        resp = dv.get(link, headers=prefer)  # verbatim, as clients do
    visited = [k for page in pages for k in page]
    assert len(visited) == len(set(visited)), "no row twice"
    assert set(visited) == expected, "every row once"
    assert all(len(p) == 7 for p in pages[:-1]) and 0 < len(pages[-1]) <= 7
    assert len(pages) == -(-len(expected) // 7)
    if "$orderby" in params:
        names = [r["name"] for r in all_pages(dv, f"{sandbox.api}/{set_name}", params, "odata.maxpagesize=7")]
        assert [_ci(n) for n in names] == sorted((_ci(n) for n in names), reverse=True)


def test_top_is_ignored_with_maxpagesize(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/accounts", params={"$select": "name", "$top": "3"},
                  headers={"Prefer": "odata.maxpagesize=10"})
    body = resp.json()
    assert len(body["value"]) == 10 and "@odata.nextLink" in body


# -- annotations -----------------------------------------------------------------------------------
def test_include_all_annotations_on_a_record(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/accounts({ADATUM})",
                  params={"$select": "name,customertypecode,creditlimit,createdon,_transactioncurrencyid_value,"
                                     "_ownerid_value,statecode"},
                  headers={"Prefer": 'odata.include-annotations="*"'})
    assert resp.status_code == 200
    assert resp.headers["Preference-Applied"] == 'odata.include-annotations="*"'
    body = resp.json()
    [row] = [r for r in store_rows(sandbox, "account") if r["accountid"] == ADATUM]
    assert body[f"customertypecode{FORMATTED}"] == "Customer"
    assert body[f"statecode{FORMATTED}"] == "Active"
    assert body[f"creditlimit{FORMATTED}"] == f"${row['creditlimit']:,.2f}"
    created = row["createdon"]
    hour = created.hour % 12 or 12
    assert body[f"createdon{FORMATTED}"] == (
        f"{created.month}/{created.day}/{created.year} {hour}:{created.minute:02d} {'AM' if created.hour < 12 else 'PM'}")
    assert body[f"_transactioncurrencyid_value{FORMATTED}"] == "US Dollar"
    assert body[f"_transactioncurrencyid_value{LOGICAL}"] == "transactioncurrency"
    assert body[f"_transactioncurrencyid_value{NAVIGATION}"] == "transactioncurrencyid"
    owner_kind = row["ownerid_type"]
    assert body[f"_ownerid_value{LOGICAL}"] == owner_kind
    assert body[f"_ownerid_value{NAVIGATION}"] == "ownerid"
    keys = list(body)
    for prop in ("customertypecode", "creditlimit", "_transactioncurrencyid_value"):
        assert keys.index(f"{prop}{FORMATTED}") < keys.index(prop), "annotations precede the value"
    assert f"name{FORMATTED}" not in body, "plain strings have no formatted value"


def test_include_all_annotations_on_a_collection(sandbox, dv: requests.Session) -> None:
    headers = {"Prefer": 'odata.include-annotations="*"'}
    body = query(dv, f"{sandbox.api}/accounts", {"$select": "name", "$top": "2"}, **headers)
    assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == -1
    assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is False
    total = len(store_rows(sandbox, "account"))
    counted = query(dv, f"{sandbox.api}/accounts", {"$select": "name", "$top": "2", "$count": "true"}, **headers)
    assert counted["@Microsoft.Dynamics.CRM.totalrecordcount"] == counted["@odata.count"] == total


def test_include_only_formatted_values(sandbox, dv: requests.Session) -> None:
    body = query(dv, f"{sandbox.api}/accounts({ADATUM})",
                 {"$select": "customertypecode,_transactioncurrencyid_value"},
                 Prefer='odata.include-annotations="OData.Community.Display.V1.FormattedValue"')
    assert body[f"customertypecode{FORMATTED}"] == "Customer"
    assert body[f"_transactioncurrencyid_value{FORMATTED}"] == "US Dollar"
    assert not any(LOGICAL in k or NAVIGATION in k for k in body)


def test_no_annotations_unless_asked(sandbox, dv: requests.Session) -> None:
    body = query(dv, f"{sandbox.api}/accounts({ADATUM})")
    assert not any("@OData.Community" in k or "@Microsoft.Dynamics" in k for k in body)
    listed = query(dv, f"{sandbox.api}/accounts", {"$top": "1"})
    assert "@Microsoft.Dynamics.CRM.totalrecordcount" not in listed


def test_annotations_on_expanded_records(sandbox, dv: requests.Session, primary_contacts: dict[str, str]) -> None:
    account = next(iter(primary_contacts))
    body = query(dv, f"{sandbox.api}/accounts({account})",
                 {"$select": "_primarycontactid_value", "$expand": "primarycontactid($select=statecode)"},
                 Prefer='odata.include-annotations="*"')
    contact = [c for c in store_rows(sandbox, "contact") if c["contactid"] == primary_contacts[account]][0]
    assert body[f"_primarycontactid_value{FORMATTED}"] == contact["fullname"]
    assert body[f"_primarycontactid_value{LOGICAL}"] == "contact"
    assert body["primarycontactid"][f"statecode{FORMATTED}"] == "Active"


def test_expand_lookup_ref_returns_only_the_uri(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/contacts", params={
        "$select": "fullname", "$expand": "parentcustomerid_account/$ref",
        "$filter": "_parentcustomerid_value ne null"})
    assert resp.status_code == 200
    rows = [r for r in resp.json()["value"] if r["parentcustomerid_account"] is not None]
    assert rows, "the seed has contacts parented to accounts"
    for row in rows:
        assert set(row["parentcustomerid_account"]) == {"@odata.id"}
        assert row["parentcustomerid_account"]["@odata.id"].startswith(f"{sandbox.api}/accounts(")
    assert "parentcustomerid_account()" in resp.json()["@odata.context"]


def test_paging_cookie_carries_the_keyset_so_deletes_between_pages_skip_nothing(sandbox, dv: requests.Session) -> None:
    """The skip token holds the last row's sort values: deleting that row does not disturb the next page."""
    created = []
    for i in range(7):
        resp = dv.post(f"{sandbox.api}/accounts", json={"name": f"Keyset probe {i:02d}"})
        assert resp.status_code == 204
        created.append(resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))
    params = {"$select": "name", "$filter": "startswith(name,'Keyset probe')", "$orderby": "name desc"}
    headers = {"Prefer": "odata.maxpagesize=3"}
    first = dv.get(f"{sandbox.api}/accounts", params=params, headers=headers).json()
    names = [r["name"] for r in first["value"]]
    assert names == ["Keyset probe 06", "Keyset probe 05", "Keyset probe 04"]
    assert "pagingcookie=" in first["@odata.nextLink"]
    # The last row of the page disappears before the client asks for the next page.
    assert dv.delete(f"{sandbox.api}/accounts({created[4]})").status_code == 204
    link = first["@odata.nextLink"]
    while link:
        page = dv.get(link, headers=headers).json()
        names += [r["name"] for r in page["value"]]
        link = page.get("@odata.nextLink")
    assert names == [f"Keyset probe {i:02d}" for i in (6, 5, 4, 3, 2, 1, 0)]
    bad = dv.get(first["@odata.nextLink"].replace("pagingcookie", "pagingcrumb"), headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "0x80040203"
