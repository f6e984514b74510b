"""P5: the mock services' throughput over HTTP, each read against an anchor.

A sandbox started from the data set's template (N BC customers, N Dataverse accounts), over plain HTTP
with service protection off, measured under the same load as its anchors (``bench.anchors``):

- keyed GET (Dataverse ``accounts(id)``, BC ``customers(id)``) vs a bare Flask app on the same server
  class and thread count;
- a one-row filtered query over the N rows (Dataverse ``$filter=name eq …``, BC ``$filter=displayName
  eq …``) vs json-server over the same rows (``?name=…``);
- bulk writes in records/s: Dataverse ``CreateMultiple`` and ``UpsertMultiple`` (500 a request), a
  multipart ``$batch`` of 500 creates (the connector's write path), BC JSON ``$batch`` (100 creates).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.anchors import Load, LoadGenerator, bare_flask, install_json_server, json_server
from bench.report import Figure
from bench.workbench import Template, sandbox_from
from mockservers.testing import RunningSandbox

DATAVERSE_BULK, BC_BULK = 500, 100


def _url(base: str, **params: str) -> str:
    return str(requests.Request("GET", base, params=params).prepare().url)


def _rows(session: requests.Session, url: str, page: int = 5000) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    link: str | None = url
    while link:
        body = session.get(link, headers={"Prefer": f"odata.maxpagesize={page}"}, timeout=600).json()
        rows += [{k: v for k, v in r.items() if not k.startswith("@") and v is not None} for r in body["value"]]
        link = body.get("@odata.nextLink")
    return rows


def _load_note(load: Load, tool: str) -> str:
    errors = f"; {load.errors} errors" if load.errors else ""
    return f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms; {tool}{errors}"


def service_throughput(directory: Path, template: Template, *, seconds: float,
                       anchors: bool = True) -> list[Figure]:
    n = template.customers
    scratch = directory / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    load = LoadGenerator(scratch, seconds)
    sandbox = sandbox_from(template, directory, tls=False, limits=False)
    figures: list[Figure] = []
    try:
        dv, bc = sandbox.session(), sandbox.bc_session()
        dv_token, bc_token = sandbox.token(), sandbox.bc_token()
        company_api = f"{sandbox.bc_api}/companies({sandbox.companies[0]})"
        accounts = _rows(dv, _url(f"{sandbox.api}/accounts", **{"$select": "accountid,name,accountnumber,address1_city"}))
        customers = _rows(bc, _url(f"{company_api}/customers", **{"$select": "id,number,displayName,city"}))
        account, customer = _unique(accounts, "name"), _unique(customers, "displayName")
        urls = {
            "dataverse_key": _url(f"{sandbox.api}/accounts({account['accountid']})", **{"$select": "name,accountnumber"}),
            "bc_key": _url(f"{company_api}/customers({customer['id']})", **{"$select": "number,displayName"}),
            "dataverse_filter": _url(f"{sandbox.api}/accounts", **{"$filter": f"name eq {_literal(account['name'])}",
                                                                   "$select": "name,accountnumber"}),
            "bc_filter": _url(f"{company_api}/customers", **{"$filter": f"displayName eq {_literal(customer['displayName'])}",
                                                              "$select": "number,displayName"}),
        }
        for key, session in (("dataverse_filter", dv), ("bc_filter", bc)):  # each query answers one row
            found = session.get(urls[key], timeout=60).json()["value"]
            if len(found) != 1:
                raise SystemExit(f"P5: {urls[key]} answered {len(found)} rows, not 1")

        with bare_flask() as flask_url:
            flask = load.run(flask_url)
        figures.append(Figure("P5", "anchor: bare Flask keyed GET", n, flask.requests_per_s, "req/s",
                              note=_load_note(flask, load.tool) + "; same server class and threads"))
        for key, label, token in (("dataverse_key", "Dataverse keyed GET accounts(id)", dv_token),
                                  ("bc_key", "BC keyed GET customers(id)", bc_token)):
            measured = load.run(urls[key], token)
            figures.append(Figure("P5", label, n, measured.requests_per_s, "req/s",
                                  f"anchor: bare Flask {flask.requests_per_s:,.0f} req/s",
                                  ratio=measured.requests_per_s / flask.requests_per_s,
                                  note=_load_note(measured, load.tool)))

        anchor: dict[str, Load] = {}
        if anchors:
            script, why = install_json_server()
            if script is None:
                figures.append(Figure("P5", "anchor: json-server one-row query", n, None, "req/s",
                                      note=f"json-server: not measured ({why})"))
            else:
                db = {"accounts": [{"id": r["accountid"], **r} for r in accounts],
                      "customers": [{**r} for r in customers]}
                with json_server(script, db, scratch) as base:
                    for key, collection, field, row in (("dataverse_filter", "accounts", "name", account),
                                                        ("bc_filter", "customers", "displayName", customer)):
                        target = _url(f"{base}/{collection}", **{field: row[field]})
                        if len(requests.get(target, timeout=60).json()) != 1:
                            raise SystemExit(f"P5: json-server's {target} did not answer one row")
                        anchor[key] = load.run(target)
                        figures.append(Figure("P5", f"anchor: json-server ?{field}= over N {collection}", n,
                                              anchor[key].requests_per_s, "req/s",
                                              note=f"{why}; " + _load_note(anchor[key], load.tool)))
        else:
            figures.append(Figure("P5", "anchor: json-server one-row query", n, None, "req/s",
                                  note="json-server: not measured (--no-anchors)"))
        for key, label, token in (("dataverse_filter", "Dataverse one-row $filter over N accounts", dv_token),
                                  ("bc_filter", "BC one-row $filter over N customers", bc_token)):
            measured = load.run(urls[key], token)
            reference = anchor.get(key)
            figures.append(Figure(
                "P5", label, n, measured.requests_per_s, "req/s",
                f"anchor: json-server {reference.requests_per_s:,.0f} req/s" if reference else "anchor: json-server",
                ratio=measured.requests_per_s / reference.requests_per_s if reference else None,
                note=_load_note(measured, load.tool)))

        figures += bulk_writes(sandbox, n, seconds)
    finally:
        sandbox.stop()
    return figures


def _unique(rows: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """The row nearest the middle whose ``field`` no other row shares (case ignored, as the services compare)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get(field, "")).casefold()] = counts.get(str(r.get(field, "")).casefold(), 0) + 1
    middle = len(rows) // 2
    for r in sorted(rows[middle:] + rows[:middle], key=lambda r: "'" in str(r.get(field, ""))):
        if r.get(field) and counts[str(r[field]).casefold()] == 1:
            return r
    raise SystemExit(f"P5: no row with a {field} of its own among {len(rows)}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _timed_writes(label: str, n: int, seconds: float, per_request: int, call: Callable[[int], requests.Response],
                  note: str) -> Figure:
    started = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - started < seconds:
        resp = call(calls)
        if resp.status_code >= 400:
            raise SystemExit(f"P5 {label}: HTTP {resp.status_code} {resp.text[:300]}")
        calls += 1
    elapsed = time.perf_counter() - started
    return Figure("P5", label, n, calls * per_request / elapsed, "records/s",
                  note=f"{calls} requests of {per_request}, {elapsed / calls * 1000:,.0f} ms each; {note}")


def bulk_writes(sandbox: RunningSandbox, n: int, seconds: float) -> list[Figure]:
    dv, bc = sandbox.session(), sandbox.bc_session()
    api, tag = sandbox.api, uuid.uuid4().hex[:6]
    account = "Microsoft.Dynamics.CRM.account"

    def targets(i: int, **extra: Any) -> list[dict[str, Any]]:
        return [{"@odata.type": account, "name": f"Bulk {tag} {i}-{j}", "customertypecode": 3, **extra}
                for j in range(DATAVERSE_BULK)]

    def multipart(i: int) -> requests.Response:
        parts = "".join(
            f"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"POST {api}/accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
            f"{json.dumps({'name': f'Batch {tag} {i}-{j}', 'customertypecode': 3})}\r\n" for j in range(DATAVERSE_BULK))
        resp = dv.post(f"{api}/$batch", data=(parts + "--b--\r\n").encode(), timeout=600,
                       headers={"Content-Type": "multipart/mixed; boundary=b"})
        if resp.ok and resp.text.count("HTTP/1.1 204") != DATAVERSE_BULK:
            raise SystemExit(f"P5 Dataverse $batch: not every create succeeded: {resp.text[:300]}")
        return resp

    def upserts(i: int) -> requests.Response:
        rows = [{**t, "accountid": str(uuid.uuid4())} for t in targets(i)]
        return dv.post(f"{api}/accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": rows}, timeout=600)

    company = sandbox.companies[0]

    def bc_batch(i: int) -> requests.Response:
        resp = bc.post(f"{sandbox.bc_api}/$batch", timeout=600, json={"requests": [
            {"id": str(j), "method": "POST", "url": f"companies({company})/customers",
             "headers": {"Content-Type": "application/json"}, "body": {"displayName": f"Batch {tag} {i}-{j}"}}
            for j in range(BC_BULK)]})
        if resp.ok and any(r["status"] != 201 for r in resp.json()["responses"]):
            raise SystemExit(f"P5 BC $batch: an operation failed: {resp.text[:300]}")
        return resp

    return [
        _timed_writes(f"Dataverse CreateMultiple ×{DATAVERSE_BULK}", n, seconds, DATAVERSE_BULK, lambda i: dv.post(
            f"{api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets(i)}, timeout=600),
            "new accounts"),
        _timed_writes(f"Dataverse UpsertMultiple ×{DATAVERSE_BULK}", n, seconds, DATAVERSE_BULK, upserts,
                      "new accounts, client-chosen ids"),
        _timed_writes(f"Dataverse multipart $batch ×{DATAVERSE_BULK}", n, seconds, DATAVERSE_BULK, multipart,
                      "POST per part: the connector's write path"),
        _timed_writes(f"BC JSON $batch ×{BC_BULK}", n, seconds, BC_BULK, bc_batch, "new customers"),
    ]
