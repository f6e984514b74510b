"""The connector at run time: configuration, state, both clients, and this company's identity."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .clients import BCClient, DataverseClient, HttpCore, RetrySettings, TokenSource
from .clients._chunks import quote
from .config import Config
from .mappings.tables import custom_api_sets
from .store import State, TableMapping


class ConnectorError(Exception):
    """A request the connector refuses (unknown mapping or key, refused direction): one line for the user."""


@dataclass
class Company:
    """This BC company and its ``bcbi_company`` row in Dataverse (the company id of the filters)."""

    bc_id: str
    name: str
    dataverse_id: str
    default_owning_team: str | None


@dataclass
class Connector:
    config: Config
    state: State
    dataverse: DataverseClient
    bc: BCClient
    _company: Company | None = field(default=None, repr=False)
    _lcy: tuple[str | None] | None = field(default=None, repr=False)
    _integration_user: str | None = field(default=None, repr=False)

    @classmethod
    def open(cls, config: Config) -> Connector:
        tokens = TokenSource(authority=config.authority, client_id=config.client_id,
                             client_secret=config.client_secret, verify=config.verify,
                             instance_discovery=config.instance_discovery)
        retries = RetrySettings(attempts=config.retries)
        dataverse_core = HttpCore(service="dataverse", root=config.dataverse_api_root, scope=config.dataverse_scope,
                                  tokens=tokens, verify=config.verify, retries=retries,
                                  headers={"OData-MaxVersion": "4.0", "OData-Version": "4.0"})
        bc_core = HttpCore(service="bc", root=config.bc_api_root, scope=config.bc_scope, tokens=tokens,
                           verify=config.verify, retries=retries)
        return cls(
            config=config,
            state=State(config.state_url),
            dataverse=DataverseClient(dataverse_core, page_size=config.page_size,
                                      batch_size=config.dataverse_batch_size),
            bc=BCClient(bc_core, config.company_id, custom_api_root=config.bc_custom_api_root,
                        custom_sets=custom_api_sets(), page_size=config.page_size, batch_size=config.bc_batch_size),
        )

    def close(self) -> None:
        self.state.close()

    # -- mappings -----------------------------------------------------------------------------
    def mappings(self) -> dict[str, TableMapping]:
        with self.state.session() as session:
            rows = session.scalars(select(TableMapping).options(selectinload(TableMapping.fields)))
            return {m.name: m for m in rows}

    def mapping(self, name: str) -> TableMapping:
        mapping = self.mappings().get(name.upper())
        if mapping is None:
            known = ", ".join(sorted(self.mappings())) or "none; run `connector setup defaults`"
            raise ConnectorError(f"unknown mapping {name!r} (mappings: {known})")
        return mapping

    # -- company ------------------------------------------------------------------------------
    def company(self) -> Company:
        """Find this company's ``bcbi_company`` row by external id, creating it when missing.

        The row's id is chosen here and written with an upsert, so a retry never makes a second row.
        """
        if self._company is None:
            external = self.config.company_id.lower()
            rows = list(self.dataverse.rows("bcbi_companies", filter=f"bcbi_externalid eq {quote(external)}",
                                            select=["bcbi_companyid", "bcbi_name", "_bcbi_defaultowningteam_value"]))
            if rows:
                row = rows[0]
            else:
                name = self.config.company_name or self._bc_company_name()
                row = self.dataverse.upsert("bcbi_companies", str(uuid.uuid4()),
                                            {"bcbi_name": name[:30], "bcbi_externalid": external})
            self._company = Company(external, row.get("bcbi_name") or "", row["bcbi_companyid"],
                                    row.get("_bcbi_defaultowningteam_value"))
        return self._company

    def _bc_company_name(self) -> str:
        for company in self.bc.companies():
            if company["id"].lower() == self.config.company_id.lower():
                return str(company["name"])
        raise ConnectorError(f"BC company {self.config.company_id} does not exist in this environment")

    def lcy_currency_id(self) -> str | None:
        """The Dataverse currency standing for BC's local currency (a blank currency code in BC)."""
        if self._lcy is None:
            rows = list(self.dataverse.rows(
                "transactioncurrencies", filter=f"isocurrencycode eq {quote(self.config.local_currency_code)}",
                select=["transactioncurrencyid"]))
            self._lcy = (rows[0]["transactioncurrencyid"] if rows else None,)
        return self._lcy[0]

    def integration_user_id(self) -> str:
        """The Dataverse user the connector acts as (its application user): rows it wrote carry it."""
        if self._integration_user is None:
            self._integration_user = str(self.dataverse.who_am_i()["UserId"]).lower()
        return self._integration_user

    def requests_sent(self) -> dict[str, Any]:
        return {"dataverse": self.dataverse.core.requests_sent, "bc": self.bc.core.requests_sent}
