"""Malformed input never breaks the Dataverse mock (DESIGN.md "Rules that keep it safe").

Hypothesis sends well over 500 generated inputs over real HTTPS — `$filter`, `$select`, `$orderby`,
`$expand`, `$top`, keys in the URL, JSON bodies and raw bytes for POST/PATCH, `Prefer` values —
and every answer must be a non-5xx; every error must be JSON in the Dataverse envelope
`{"error": {"code": str, "message": str}}` (never an HTML page or a traceback).
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ADATUM = "a0000000-0000-4000-8000-000000000001"



@pytest.fixture(scope="module")
def client(sandbox) -> tuple[requests.Session, str]:
    session = sandbox.session()
    # The fuzz run sends thousands of requests; the request-count limit is not what is tested here.
    resp = sandbox.control("PUT", "limits", json={"enabled": False})
    assert resp.status_code in (200, 204), resp.text
    return session, sandbox.api


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check(resp: requests.Response) -> None:
    """The invariant: no 5xx; every error is the Dataverse JSON envelope."""
    assert resp.status_code < 500, (resp.status_code, resp.request.method, resp.request.url, resp.text[:500])
    if resp.status_code >= 400:
        assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
        body = resp.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict) and {"code", "message"} <= set(error), body
        assert isinstance(error["code"], str) and isinstance(error["message"], str), body
        assert "Traceback" not in error["message"]


# -- strategies ------------------------------------------------------------------------------------
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)  # HTTP-safe
names = st.sampled_from(["name", "accountid", "customertypecode", "createdon", "modifiedon", "creditlimit",
                         "_primarycontactid_value", "primarycontactid", "contact_customer_accounts", "statecode",
                         "Name", "nosuch", "primarycontactid/fullname", "allowemail", "nullable", "versionnumber",
                         "address1_composite", "ownerid", "_ownerid_value", "*", "$count", ""])
literals = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    text.map(lambda s: "'" + s.replace("'", "''") + "'"),
    text.map(lambda s: "'" + s + "'"),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.sampled_from(["null", "true", "false", "2024-01-01T00:00:00Z", "2024-13-45T99:99:99+25:00", "2024-01-01",
                     "-INF", "NaN", "1e999", "duration'P1D'", "@p1", "[\"1\",\"2\"]", "()", "''", "'", "9" * 40]),
)
operators = st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le", "and", "or", "not", "in", "has", "add", "sub",
                             "mul", "div", "mod", "EQ", "=", "==", ""])
functions = st.sampled_from(["contains", "startswith", "endswith", "tolower", "toupper", "length", "trim",
                             "substring", "indexof", "concat", "year", "month", "day", "date", "now", "round",
                             "cast", "isof", "geo.distance", "Microsoft.Dynamics.CRM.In",
                             "Microsoft.Dynamics.CRM.NotIn", "Microsoft.Dynamics.CRM.Between",
                             "Microsoft.Dynamics.CRM.LastXDays", "Microsoft.Dynamics.CRM.Today",
                             "Microsoft.Dynamics.CRM.Nope", "Microsoft.Dynamics.CRM.EqualUserId"])


@st.composite
def filter_expressions(draw, depth: int = 0) -> str:
    choice = draw(st.integers(0, 7 if depth < 3 else 3))
    if choice == 0:
        return f"{draw(names)} {draw(operators)} {draw(literals)}"
    if choice == 1:
        args = draw(st.lists(st.one_of(names, literals), max_size=3))
        return f"{draw(functions)}({','.join(args)})"
    if choice == 2:
        named = draw(st.lists(st.tuples(st.sampled_from(["PropertyName", "PropertyValues", "PropertyValue", "X"]),
                                        literals), max_size=3))
        return f"{draw(functions)}({','.join(f'{k}={v}' for k, v in named)})"
    if choice == 3:
        return draw(text)
    if choice == 4:
        return f"({draw(filter_expressions(depth + 1))}) {draw(operators)} ({draw(filter_expressions(depth + 1))})"
    if choice == 5:
        return f"not {draw(filter_expressions(depth + 1))}"
    if choice == 6:
        var = draw(st.sampled_from(["x", "c", "", "1"]))
        return (f"{draw(names)}/{draw(st.sampled_from(['any', 'all', 'count', 'x']))}"
                f"({var}: {var}/{draw(names)} {draw(operators)} {draw(literals)})")
    return draw(filter_expressions(depth + 1)) + draw(st.sampled_from(["", ")", "(", "'", " and", ",", "/"]))


comma_lists = st.lists(st.one_of(names, text), max_size=5).map(",".join)
orderby_items = st.lists(
    st.tuples(st.one_of(names, text), st.sampled_from(["", " asc", " desc", " DESC", " up", "  desc asc"])),
    max_size=4,
).map(lambda items: ",".join(n + d for n, d in items))


@st.composite
def expand_options(draw, depth: int = 0) -> str:
    items = []
    for _ in range(draw(st.integers(0, 3))):
        nav = draw(st.one_of(names, text))
        if draw(st.booleans()):
            opts = draw(st.lists(st.one_of(
                st.builds(lambda v: f"$select={v}", comma_lists),
                st.builds(lambda v: f"$filter={v}", filter_expressions(2)),
                st.builds(lambda v: f"$orderby={v}", orderby_items),
                st.builds(lambda v: f"$top={v}", st.one_of(literals, text)),
                st.builds(lambda v: f"$expand={v}", expand_options(depth + 1)) if depth < 2 else text,
                text,
            ), max_size=3))
            nav += "(" + draw(st.sampled_from([";", ",", ""])).join(opts) + draw(st.sampled_from([")", "", "))"]))
        items.append(nav)
    return ",".join(items)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), text),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(text, names), children, max_size=4)),
    max_leaves=12,
)
account_bodies = st.dictionaries(
    st.sampled_from(["name", "accountnumber", "customertypecode", "creditlimit", "revenue", "statecode",
                     "statuscode", "createdon", "accountid", "numberofemployees", "creditonhold",
                     "primarycontactid", "primarycontactid@odata.bind", "ownerid@odata.bind",
                     "contact_customer_accounts", "contact_customer_accounts@odata.bind", "parentaccountid@odata.bind",
                     "transactioncurrencyid@odata.bind", "@odata.type", "_primarycontactid_value", "Name",
                     "name@OData.Community.Display.V1.FormattedValue"]),
    json_values,
    max_size=5,
)


# -- the runs (examples add up to 600+) -------------------------------------------------------------
@fuzz_settings(160)
@given(expression=filter_expressions(), set_name=st.sampled_from(["accounts", "contacts", "products"]))
def test_filter(client, expression: str, set_name: str) -> None:
    session, api = client
    check(session.get(f"{api}/{set_name}", params={"$filter": expression, "$top": "3"}))


@fuzz_settings(60)
@given(select=comma_lists)
def test_select(client, select: str) -> None:
    session, api = client
    check(session.get(f"{api}/accounts", params={"$select": select, "$top": "2"}))
    check(session.get(f"{api}/accounts({ADATUM})", params={"$select": select}))


@fuzz_settings(60)
@given(orderby=orderby_items)
def test_orderby(client, orderby: str) -> None:
    session, api = client
    check(session.get(f"{api}/accounts", params={"$orderby": orderby, "$top": "2", "$select": "name"}))


@fuzz_settings(80)
@given(expand=expand_options())
def test_expand(client, expand: str) -> None:
    session, api = client
    check(session.get(f"{api}/accounts", params={"$expand": expand, "$top": "2", "$select": "name"}))
    check(session.get(f"{api}/accounts({ADATUM})", params={"$expand": expand, "$select": "name"}))


@fuzz_settings(50)
@given(top=st.one_of(literals, text), count=st.one_of(st.sampled_from(["true", "false"]), text),
       page=st.one_of(st.integers(-5, 10**12).map(str), header_text))
def test_top_count_and_page_size(client, top: str, count: str, page: str) -> None:
    session, api = client
    check(session.get(f"{api}/accounts", params={"$top": top, "$select": "name"}))
    check(session.get(f"{api}/accounts", params={"$count": count, "$top": "1", "$select": "name"}))
    check(session.get(f"{api}/accounts", params={"$select": "name"},
                      headers={"Prefer": f"odata.maxpagesize={page}"}))


key_garbage = st.one_of(
    text,
    literals,
    st.lists(st.tuples(st.one_of(names, text), literals), max_size=3).map(
        lambda pairs: ",".join(f"{k}={v}" for k, v in pairs)),
    st.sampled_from(["", "'", "''", "accountnumber=", "accountnumber='x", "=1", "{" + ADATUM + "}", ADATUM + ")",
                     ADATUM + "(", "accountnumber='C10000',accountnumber='C10000'", "name='Coho Winery'",
                     "accountid=" + ADATUM, "_primarycontactid_value=null"]),
)


@fuzz_settings(90)
@given(key=key_garbage, method=st.sampled_from(["GET", "DELETE", "PATCH"]),
       tail=st.sampled_from(["", "/name", "/primarycontactid", "/contact_customer_accounts/$count", "/$ref", "/x"]))
def test_keys_in_the_url(client, key: str, method: str, tail: str) -> None:
    session, api = client
    url = f"{api}/accounts({quote(key, safe=chr(39) + '=,')}){tail}"
    body = {"name": "Fuzzed key"} if method == "PATCH" else None
    check(session.request(method, url, json=body))


@fuzz_settings(90)
@given(body=st.one_of(json_values, account_bodies), method=st.sampled_from(["POST", "PATCH", "PUT"]),
       target=st.sampled_from(["accounts", f"accounts({ADATUM})", "contacts", f"accounts({ADATUM})/name",
                               "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
                               "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", "$batch"]))
def test_json_bodies(client, body, method: str, target: str) -> None:
    session, api = client
    if target == "accounts" and method == "PATCH":
        target = "accounts(00000000-0000-0000-0000-00000000f022)"
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    check(session.request(method, f"{api}/{target}", data=payload,
                          headers={"Content-Type": "application/json"}))


@fuzz_settings(50)
@given(raw=st.binary(max_size=200), method=st.sampled_from(["POST", "PATCH"]),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "multipart/mixed; boundary=batch_x", "multipart/mixed"]))
def test_random_bytes(client, raw: bytes, method: str, content_type: str) -> None:
    session, api = client
    target = "accounts" if method == "POST" else f"accounts({ADATUM})"
    check(session.request(method, f"{api}/{target}", data=raw, headers={"Content-Type": content_type}))
    if content_type.startswith("multipart"):
        check(session.post(f"{api}/$batch", data=raw, headers={"Content-Type": content_type}))
