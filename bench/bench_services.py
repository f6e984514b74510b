"""Throughput figures for the two mock services (prints numbers; never a test).

    .venv/bin/python bench/bench_services.py [--tls] [--requests 300]

Starts a seeded sandbox in a temporary directory with service protection switched off and measures,
over real HTTP on loopback: single-record reads, filtered list pages, single creates, bulk creates
(CreateMultiple and a multipart $batch on Dataverse, a JSON $batch on BC) and paging through a set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from mockservers.server import Sandbox, SandboxConfig


def token(info: dict, scope: str, verify: bool | str) -> str:
    resp = requests.post(f"{info['identity']['authority']}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": info["app"]["client_id"],
        "client_secret": info["app"]["client_secret"], "scope": scope}, verify=verify, timeout=10)
    resp.raise_for_status()
    return resp.json()["access_token"]


def measure(label: str, count: int, call: Callable[[int], requests.Response], items_per_call: int = 1) -> None:
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        resp = call(i)
        latencies.append((time.perf_counter() - t0) * 1000)
        if resp.status_code >= 400:
            raise SystemExit(f"{label}: HTTP {resp.status_code} {resp.text[:200]}")
    elapsed = time.perf_counter() - started
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95) - 1] if len(latencies) > 1 else latencies[0]
    print(f"{label:<44} {count / elapsed:8.1f} req/s {count * items_per_call / elapsed:9.1f} rec/s "
          f"median {statistics.median(latencies):7.1f} ms  p95 {p95:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (each request pays a TLS handshake)")
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    args = parser.parse_args()
    n = args.requests
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request access log in the figures
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would override the sandbox CA below
        os.environ.pop(name, None)

    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Sandbox(SandboxConfig(data_dir=Path(tmp), identity_port=0, dataverse_port=0, bc_port=0,
                                        tls=args.tls, seed=True))
        info = sandbox.start()
        verify: bool | str = info["ca_bundle"] or True
        try:
            for service in ("dataverse", "bc"):
                requests.put(f"{info[service]['url']}/_sandbox/limits", json={"enabled": False}, verify=verify,
                             headers={"Authorization": f"Bearer {info['admin_token']}"}, timeout=10).raise_for_status()
            dv = requests.Session()
            dv.verify = verify
            dv.headers["Authorization"] = f"Bearer {token(info, info['dataverse']['scope'], verify)}"
            api = info["dataverse"]["api_root"]
            bc = requests.Session()
            bc.verify = verify
            bc.headers["Authorization"] = f"Bearer {token(info, info['bc']['scope'], verify)}"
            company = info["bc"]["companies"][0]["id"]
            bc_root = f"{info['bc']['api_root']}/companies({company})"

            print(f"sandbox over {'HTTPS' if args.tls else 'HTTP'}, {n} requests per line")
            account = dv.get(f"{api}/accounts?$top=1&$select=name").json()["value"][0]["accountid"]
            measure("dataverse GET accounts(id)", n, lambda i: dv.get(f"{api}/accounts({account})"))
            measure("dataverse GET accounts?$filter (page)", n, lambda i: dv.get(
                f"{api}/accounts", params={"$select": "name,telephone1", "$filter": "statecode eq 0 and "
                                           "startswith(name,'a')", "$top": "20"}))
            measure("dataverse POST accounts", n, lambda i: dv.post(f"{api}/accounts", json={"name": f"Bench {i}"}))
            batch = 100
            measure(f"dataverse CreateMultiple x{batch}", max(n // 30, 3), lambda i: dv.post(
                f"{api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [
                    {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"Bulk {i}-{j}"} for j in range(batch)]}),
                items_per_call=batch)

            def multipart(i: int) -> requests.Response:
                parts = "".join(
                    f"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                    f"POST {api}/accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
                    f"{json.dumps({'name': f'Batch {i}-{j}'})}\r\n" for j in range(batch))
                return dv.post(f"{api}/$batch", data=(parts + "--b--\r\n").encode(),
                               headers={"Content-Type": "multipart/mixed; boundary=b"})

            measure(f"dataverse $batch x{batch} creates", max(n // 30, 3), multipart, items_per_call=batch)

            def page_all(_: int) -> requests.Response:
                link, resp = f"{api}/accounts?$select=name", None
                while link:
                    resp = dv.get(link, headers={"Prefer": "odata.maxpagesize=500"})
                    link = resp.json().get("@odata.nextLink")
                return resp

            total = int(dv.get(f"{api}/accounts/$count").content.decode("utf-8-sig"))
            measure(f"dataverse page {total} accounts by 500", 3, page_all, items_per_call=total)

            customer = bc.get(f"{bc_root}/customers?$top=1").json()["value"][0]["id"]
            measure("bc GET customers(id)", n, lambda i: bc.get(f"{bc_root}/customers({customer})"))
            measure("bc GET customers?$filter", n, lambda i: bc.get(
                f"{bc_root}/customers", params={"$filter": "startswith(displayName,'A')", "$top": "20"}))
            measure("bc POST customers", n, lambda i: bc.post(f"{bc_root}/customers", json={"displayName": f"B {i}"}))
            measure("bc $batch x100 creates", max(n // 30, 3), lambda i: bc.post(
                f"{info['bc']['api_root']}/$batch", json={"requests": [
                    {"method": "POST", "url": f"companies({company})/customers", "id": str(j),
                     "body": {"displayName": f"Batch {i}-{j}"}} for j in range(100)]}), items_per_call=100)
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
