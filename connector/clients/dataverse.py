"""Dataverse Web API client (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/overview)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from ._chunks import chunks
from .batch import BatchOp, BatchResult, decode_multipart, encode_multipart
from .errors import ServiceError
from .http import HttpCore, query_options

MAX_BATCH = 1000  # operations per $batch request
ID_CHUNK = 250  # ids per In() filter: about 10 KB of URL, far below the 32 KB limit


class DataverseClient:
    """Reads page by page, writes in ``$batch`` requests of independent operations."""

    def __init__(self, core: HttpCore, *, page_size: int = 500, batch_size: int = 500) -> None:
        self.core = core
        self.page_size = page_size
        self.batch_size = min(batch_size, MAX_BATCH)

    @property
    def api_root(self) -> str:
        return self.core.root

    def who_am_i(self) -> dict[str, Any]:
        return dict(self.core.send("GET", "WhoAmI").json())

    def get(self, set_name: str, key: str, *, select: Iterable[str] | None = None) -> dict[str, Any] | None:
        return self.core.get_one(f"{set_name}({key})", query_options(select=select))

    def rows(self, set_name: str, *, filter: str | None = None, select: Iterable[str] | None = None,
             orderby: str | None = None, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        yield from self.core.rows(set_name, query_options(filter=filter, select=select, orderby=orderby),
                                  page_size=page_size or self.page_size)

    def rows_by_ids(self, set_name: str, key: str, ids: Iterable[str], *, select: Iterable[str] | None = None,
                    filter: str | None = None) -> Iterator[dict[str, Any]]:
        """The rows with these primary keys (missing ones are simply absent), one request per chunk."""
        select = list(select) if select else None
        for chunk in chunks(ids, ID_CHUNK):
            condition = f"Microsoft.Dynamics.CRM.In(PropertyName='{key}',PropertyValues={json.dumps(chunk)})"
            yield from self.rows(set_name, filter=f"{condition} and ({filter})" if filter else condition,
                                 select=select)

    def batch(self, ops: list[BatchOp]) -> list[BatchResult]:
        """Run independent operations in ``$batch`` requests; each gets its own status.

        ``odata.continue-on-error`` keeps one failing record from stopping the others.
        """
        results: list[BatchResult] = []
        for chunk in chunks(ops, self.batch_size):
            content_type, body = encode_multipart(chunk, self.core.root)
            response = self.core.send("POST", "$batch", data=body, headers={
                "Content-Type": content_type, "Prefer": "odata.continue-on-error"})
            decoded = decode_multipart(response.headers.get("Content-Type", ""), response.content)
            if len(decoded) != len(chunk):
                raise ServiceError("dataverse", response.status_code, "", f"$batch answered {len(decoded)} "
                                   f"responses for {len(chunk)} operations")
            results.extend(decoded)
        return results

    def upsert_multiple(self, set_name: str, logical_name: str, rows: list[dict[str, Any]],
                        key: str | None = None) -> list[dict[str, Any]]:
        """``UpsertMultiple``: one request, all rows or none; each row carries its primary key
        (https://learn.microsoft.com/power-apps/developer/data-platform/bulk-operations)."""
        key = key or f"{logical_name}id"
        targets = [{"@odata.type": f"Microsoft.Dynamics.CRM.{logical_name}", "@odata.id": f"{set_name}({row[key]})",
                    **{k: v for k, v in row.items() if k != key}} for row in rows]
        answer = self.core.send("POST", f"{set_name}/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets})
        return list(answer.json().get("Results", []))

    def upsert(self, set_name: str, key: str, body: dict[str, Any], *, if_match: str | None = None,
               if_none_match: str | None = None) -> dict[str, Any]:
        """PATCH one row and return its representation (create when absent unless ``if_match``)."""
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        return dict(self.core.send("PATCH", f"{set_name}({key})", json=body, headers=headers).json())
