"""Unbound Web API functions the org answers: WhoAmI, RetrieveVersion, RetrieveCurrentOrganization.

Each function is declared once here: its CSDL (parameters, return type and the types they use),
which ``$metadata`` carries, and the response body it answers with. Shapes follow the Web API
reference (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/webapi/reference/retrieveversion,
https://learn.microsoft.com/en-us/power-apps/developer/data-platform/webapi/reference/retrievecurrentorganization).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import exceptions as exc
from .exceptions import DataverseError

CRM = "Microsoft.Dynamics.CRM"
# The version this sandbox reports; the shape is what matters to clients (major.minor.build.revision).
VERSION = "9.2.25051.00180"

# EnumType members in declaration order (their values are the positions).
ENDPOINT_ACCESS_TYPES = ("Default", "Internet", "Intranet")
ENDPOINT_TYPES = ("WebApplication", "OrganizationService", "OrganizationDataService")
ORGANIZATION_STATES = ("Enabled", "Disabled")
ORGANIZATION_TYPES = ("Customer", "Monitoring", "Support", "BackEnd", "Secondary", "CustomerTest",
                      "CustomerFreeTest", "CustomerPreview", "Placeholder", "TestDrive", "MsftInvestigation",
                      "EmailTrial", "Default", "Developer", "Trial", "Teams")


def _enum(name: str, members: tuple[str, ...]) -> str:
    return f'<EnumType Name="{name}">' + "".join(
        f'<Member Name="{m}" Value="{i}"/>' for i, m in enumerate(members)) + "</EnumType>"


@dataclass(frozen=True)
class Function:
    name: str
    parameters: tuple[str, ...]  # required parameters, by name
    read_only: bool  # the message changes nothing (its sdkmessage row says isreadonly)


FUNCTIONS = {
    f.name: f
    for f in (
        Function("WhoAmI", (), True),
        Function("RetrieveVersion", (), True),
        Function("RetrieveCurrentOrganization", ("AccessType",), True),
    )
}

CSDL = (
    '<ComplexType Name="WhoAmIResponse"><Property Name="BusinessUnitId" Type="Edm.Guid" Nullable="false"/>'
    '<Property Name="UserId" Type="Edm.Guid" Nullable="false"/>'
    '<Property Name="OrganizationId" Type="Edm.Guid" Nullable="false"/></ComplexType>'
    '<Function Name="WhoAmI"><ReturnType Type="Microsoft.Dynamics.CRM.WhoAmIResponse" Nullable="false"/></Function>'
    '<ComplexType Name="RetrieveVersionResponse"><Property Name="Version" Type="Edm.String" Unicode="false"/>'
    '</ComplexType>'
    '<Function Name="RetrieveVersion">'
    '<ReturnType Type="Microsoft.Dynamics.CRM.RetrieveVersionResponse" Nullable="false"/></Function>'
    + _enum("EndpointAccessType", ENDPOINT_ACCESS_TYPES)
    + _enum("EndpointType", ENDPOINT_TYPES)
    + _enum("OrganizationState", ORGANIZATION_STATES)
    + _enum("OrganizationType", ORGANIZATION_TYPES)
    + '<ComplexType Name="EndpointCollection"><Property Name="Count" Type="Edm.Int32" Nullable="false"/>'
    '<Property Name="IsReadOnly" Type="Edm.Boolean" Nullable="false"/>'
    '<Property Name="Keys" Type="Collection(Microsoft.Dynamics.CRM.EndpointType)" Nullable="false"/>'
    '<Property Name="Values" Type="Collection(Edm.String)" Nullable="false"/></ComplexType>'
    '<ComplexType Name="OrganizationDetail"><Property Name="OrganizationId" Type="Edm.Guid" Nullable="false"/>'
    '<Property Name="FriendlyName" Type="Edm.String" Unicode="false"/>'
    '<Property Name="OrganizationVersion" Type="Edm.String" Unicode="false"/>'
    '<Property Name="EnvironmentId" Type="Edm.String" Unicode="false"/>'
    '<Property Name="DatacenterId" Type="Edm.Guid" Nullable="false"/>'
    '<Property Name="Geo" Type="Edm.String" Unicode="false"/>'
    '<Property Name="TenantId" Type="Edm.String" Unicode="false"/>'
    '<Property Name="UrlName" Type="Edm.String" Unicode="false"/>'
    '<Property Name="UniqueName" Type="Edm.String" Unicode="false"/>'
    '<Property Name="Endpoints" Type="Microsoft.Dynamics.CRM.EndpointCollection"/>'
    '<Property Name="State" Type="Microsoft.Dynamics.CRM.OrganizationState" Nullable="false"/>'
    '<Property Name="SchemaType" Type="Edm.String" Unicode="false"/>'
    '<Property Name="OrganizationType" Type="Microsoft.Dynamics.CRM.OrganizationType" Nullable="false"/>'
    '</ComplexType>'
    '<ComplexType Name="RetrieveCurrentOrganizationResponse">'
    '<Property Name="Detail" Type="Microsoft.Dynamics.CRM.OrganizationDetail"/></ComplexType>'
    '<Function Name="RetrieveCurrentOrganization">'
    '<Parameter Name="AccessType" Type="Microsoft.Dynamics.CRM.EndpointAccessType" Nullable="false"/>'
    '<ReturnType Type="Microsoft.Dynamics.CRM.RetrieveCurrentOrganizationResponse" Nullable="false"/></Function>'
)

_PARAMETER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*$")
_ENUM_LITERAL = re.compile(rf"^(?:(?:{re.escape(CRM)}|mscrm)\.(?P<type>[A-Za-z]+))?'(?P<member>[^']*)'$")


def parse_parameters(function: Function, raw: str | None, aliases: Mapping[str, str]) -> dict[str, str]:
    """``name=value`` pairs inside the function's parentheses, parameter aliases resolved."""
    values: dict[str, str] = {}
    for part in [p for p in (raw or "").split(",") if p.strip()]:
        m = _PARAMETER.match(part)
        if m is None:
            raise exc.bad_request(f"Bad Request - Error in query syntax: '{function.name}({raw})'.",
                                  exc.INVALID_ARGUMENT)
        name, value = m.groups()
        if value.startswith("@"):
            if value not in aliases:
                raise exc.bad_request(f"The parameter alias '{value}' has no value in the query.", exc.INVALID_ARGUMENT)
            value = aliases[value].strip()
        if name not in function.parameters:
            raise exc.segment_not_found(f"{function.name}({raw})")
        values[name] = value
    missing = [p for p in function.parameters if p not in values]
    if missing:
        raise exc.bad_request(f"The function '{function.name}' needs the parameter '{missing[0]}'.",
                              exc.INVALID_ARGUMENT)
    return values


def enum_member(text: str, type_name: str, members: tuple[str, ...]) -> str:
    """An enum argument as a member name: ``Microsoft.Dynamics.CRM.T'Member'``, ``'Member'`` or its value."""
    if text.isdigit() and int(text) < len(members):
        return members[int(text)]
    m = _ENUM_LITERAL.match(text)
    if m is not None and m.group("type") in (None, type_name) and m.group("member") in members:
        return m.group("member")
    raise DataverseError(400, exc.INVALID_ARGUMENT,
                         f"The value '{text}' is not a valid {CRM}.{type_name}; expected one of {', '.join(members)}.")


@dataclass(frozen=True)
class OrgContext:
    """What the functions report about the org."""

    organization_id: str
    name: str
    org_url: str  # the organization URI (also the token audience)
    tenant_id: str


def retrieve_version() -> dict[str, Any]:
    return {"Version": VERSION}


def retrieve_current_organization(org: OrgContext, access_type: str) -> dict[str, Any]:
    """OrganizationDetail of this org; ``access_type`` (Default/Internet/Intranet) picks no other URLs here."""
    host = urlsplit(org.org_url).hostname or "localhost"
    endpoints = [org.org_url + "/", f"{org.org_url}/XRMServices/2011/Organization.svc",
                 f"{org.org_url}/XRMServices/2011/OrganizationData.svc"]
    return {
        "Detail": {
            "OrganizationId": org.organization_id,
            "FriendlyName": org.name,
            "OrganizationVersion": VERSION,
            "EnvironmentId": str(uuid.uuid5(uuid.UUID(org.organization_id), "environment")),
            "DatacenterId": "00000000-0000-0000-0000-000000000000",
            "Geo": "NA",
            "TenantId": org.tenant_id,
            "UrlName": host.split(".")[0],
            "UniqueName": "unq" + org.organization_id.replace("-", ""),
            "Endpoints": {"Count": len(endpoints), "IsReadOnly": False, "Keys": list(ENDPOINT_TYPES),
                          "Values": endpoints},
            "State": "Enabled",
            "SchemaType": "Full",
            "OrganizationType": "Developer",
        }
    }
