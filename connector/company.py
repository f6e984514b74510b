"""Company ids on Dataverse rows (``bcbi_companyid``): stamping a row as this company's, or freeing it.

BC writes this company's id on the rows it creates or updates and on rows that created BC records,
and clears it when it uncouples a row it owns
(https://learn.microsoft.com/dynamics365/business-central/admin-cds-company-concept).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .clients import BatchOp, BatchResult, ClientError
from .mappings.tables import DATAVERSE_COMPANY, DATAVERSE_MODIFIED_ON, DataverseTable, lookup_value_name
from .runtime import Connector

COMPANY_VALUE = lookup_value_name(DATAVERSE_COMPANY)


def company_of(row: dict[str, Any]) -> str:
    return str(row.get(COMPANY_VALUE) or "").lower()


def set_company(cx: Connector, table: DataverseTable, rows: Iterable[dict[str, Any]], company: str | None,
                ) -> list[tuple[dict[str, Any], BatchResult | ClientError]]:
    """Bind (or, with ``None``, clear) the company of ``rows`` in one ``$batch``; every row gets its own
    answer: the row's new ``modifiedon`` on success, the error otherwise. Rows carry their ETag when
    they were read with one, so a row changed meanwhile is not overwritten."""
    rows = list(rows)
    if not rows:
        return []
    value = f"/bcbi_companies({company})" if company else None
    ops = [BatchOp("PATCH", f"{table.set_name}({row[table.key]})?$select={DATAVERSE_MODIFIED_ON}",
                   {f"{DATAVERSE_COMPANY}@odata.bind": value},
                   {"If-Match": row.get("@odata.etag", "*"), "Prefer": "return=representation"}) for row in rows]
    try:
        results: list[BatchResult | ClientError] = list(cx.dataverse.batch(ops))
    except ClientError as error:
        results = [error] * len(rows)
    return list(zip(rows, results, strict=True))


def failure(answer: BatchResult | ClientError) -> str | None:
    """The error text of an answer of :func:`set_company`, or None when it succeeded."""
    if isinstance(answer, ClientError):
        return str(answer)
    if answer.ok:
        return None
    return answer.error.message.rstrip(".") if answer.error else f"HTTP {answer.status}"
