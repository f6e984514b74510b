"""Business Central API v2.0 client, scoped to one company
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/).

Entities the standard API lacks are served by a custom API (``/api/<publisher>/<group>/<version>``),
as a real integration would add one; ``custom_sets`` names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._chunks import chunks, quote
from .batch import BatchOp, BatchResult, decode_json, encode_json
from .http import HttpCore, query_options

MAX_BATCH = 100  # operations per JSON $batch
ID_CHUNK = 100  # values per `field in (…)` filter


class BCClient:
    def __init__(self, core: HttpCore, company_id: str, *, custom_api_root: str | None = None,
                 custom_sets: Iterable[str] = (), page_size: int = 500, batch_size: int = MAX_BATCH) -> None:
        self.core = core
        self.company_id = company_id
        self.custom_api_root = custom_api_root.rstrip("/") if custom_api_root else None
        self.custom_sets = frozenset(custom_sets)
        self.page_size = page_size
        self.batch_size = min(batch_size, MAX_BATCH)

    def companies(self) -> list[dict[str, Any]]:
        return list(self.core.send("GET", "companies").json().get("value", []))

    def _root(self, set_name: str) -> str:
        if set_name in self.custom_sets:
            if self.custom_api_root is None:
                raise ValueError(f"{set_name} is served by a custom API, but no custom API root is configured")
            return self.custom_api_root
        return self.core.root

    def path(self, set_name: str, key: str | None = None) -> str:
        """The entity set (or one entity) under this company, relative to its API root."""
        return f"companies({self.company_id})/{set_name}" + (f"({key})" if key else "")

    def url(self, set_name: str, key: str | None = None) -> str:
        return f"{self._root(set_name)}/{self.path(set_name, key)}"

    def get(self, set_name: str, key: str) -> dict[str, Any] | None:
        return self.core.get_one(self.url(set_name, key))

    def rows(self, set_name: str, *, filter: str | None = None, select: Iterable[str] | None = None,
             orderby: str | None = None, page_size: int | None = None,
             schema_version: str | None = None) -> Iterator[dict[str, Any]]:
        params = query_options(filter=filter, select=select, orderby=orderby)
        if schema_version:
            params["$schemaversion"] = schema_version
        yield from self.core.rows(self.url(set_name), params, page_size=page_size or self.page_size)

    def rows_where_in(self, set_name: str, field: str, values: Iterable[str], *, guid: bool = False,
                      select: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Rows whose ``field`` is one of ``values``, one request per chunk: ``field in (…)``, which BC
        takes with ``$schemaversion=2.1``
        (https://learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/use-filter-expressions-in-odata-uris).
        The same values joined by ``or`` cost the service half as much again to parse."""
        select = list(select) if select else None
        for chunk in chunks(values, ID_CHUNK):
            listed = ",".join(value if guid else quote(value) for value in chunk)
            yield from self.rows(set_name, filter=f"{field} in ({listed})", select=select, schema_version="2.1")

    def batch(self, set_name: str, ops: list[BatchOp]) -> list[BatchResult]:
        """Run operations on one entity set in JSON ``$batch`` requests of at most 100."""
        root = self._root(set_name)
        results: list[BatchResult] = []
        for chunk in chunks(ops, self.batch_size):
            response = self.core.send("POST", f"{root}/$batch", json=encode_json(chunk))
            results.extend(decode_json(response.json(), len(chunk)))
        return results
