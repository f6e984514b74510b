"""Security roles: which table privileges a Dataverse user (an application user, too) holds.

A Dataverse caller can do only what its security roles grant: each role holds privileges such as
``prvCreateAccount`` or ``prvReadContact`` (a verb on a table), and a call that needs one the user
lacks fails with 403 ``0x80040220`` (PrivilegeDenied) naming it
(https://learn.microsoft.com/power-platform/admin/security-roles-privileges). The roles and who
holds them come from the fixture's ``security_roles``; privilege depth (user, business unit,
organization) is not modelled: a privilege a role holds counts organization-wide.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..odata.schema import EntityType, Schema
from .exceptions import DataverseError
from .metadata import object_type_code, schema_name

VERBS = ("Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign", "Share")
PRIVILEGE_DENIED = "0x80040220"
SYSTEMUSER_TYPE_CODE = 8
_PRIVILEGE_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "https://bc-dataverse-sandbox.invalid/dataverse/privileges")


@dataclass(frozen=True)
class SecurityRole:
    """A named set of privileges: table logical name (or ``*`` for every table) → verbs."""

    name: str
    role_id: str
    grants: Mapping[str, frozenset[str]]
    misc: frozenset[str] = frozenset()  # privileges on no table, e.g. prvActOnBehalfOfAnotherUser

    def allows(self, verb: str, table: str) -> bool:
        return verb in self.grants.get(table, frozenset()) or verb in self.grants.get("*", frozenset())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecurityRole:
        name = data.get("name")
        privileges = data.get("privileges", {})
        if not isinstance(name, str) or not isinstance(privileges, dict):
            raise ValueError("a security role needs a 'name' and a 'privileges' object")
        grants: dict[str, frozenset[str]] = {}
        for table, verbs in privileges.items():
            unknown = set(verbs) - set(VERBS) if isinstance(verbs, list) else {"(not a list)"}
            if unknown:
                raise ValueError(f"security role {name!r}: unknown privileges {sorted(unknown)} on {table!r}")
            grants[table] = frozenset(verbs)
        role_id = str(uuid.UUID(data["roleid"])) if "roleid" in data else str(uuid.uuid5(_PRIVILEGE_IDS, name))
        misc = data.get("misc_privileges", [])
        if not isinstance(misc, list) or not all(isinstance(m, str) and m.startswith("prv") for m in misc):
            raise ValueError(f"security role {name!r}: misc_privileges must be a list of prv… names")
        return cls(name, role_id, grants, frozenset(misc))


@dataclass(frozen=True)
class Access:
    """What one user may do: the roles it holds (its access mode appears in a refusal)."""

    user_id: str
    roles: tuple[SecurityRole, ...]
    access_mode: int = 0

    def allows(self, verb: str, entity: EntityType) -> bool:
        return any(role.allows(verb, entity.name) for role in self.roles)

    def holds(self, privilege: str) -> bool:
        return any(privilege in role.misc for role in self.roles)

    def privilege_count(self, schema: Schema) -> int:
        return sum(1 for entity in schema for verb in VERBS if self.allows(verb, entity))


@dataclass
class SecurityModel:
    """The org's roles and who holds them."""

    roles: dict[str, SecurityRole] = field(default_factory=dict)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # systemuserid → role names

    @classmethod
    def from_fixture(cls, items: Iterable[Any]) -> SecurityModel:
        model = cls()
        for item in items:
            if not isinstance(item, dict):
                raise ValueError("'security_roles' must be a list of role objects")
            role = SecurityRole.from_dict(item)
            model.roles[role.name] = role
            for user_id in item.get("members", []):
                key = str(uuid.UUID(user_id))
                model.members[key] = (*model.members.get(key, ()), role.name)
        return model

    def access_for(self, user_id: str, access_mode: int = 0) -> Access:
        names = self.members.get(user_id.lower(), ())
        return Access(user_id, tuple(self.roles[n] for n in names), access_mode)


def privilege_name(verb: str, entity: EntityType) -> str:
    return f"prv{verb}{schema_name(entity.name)}"


def privilege_denied(access: Access, verb: str, entity: EntityType, schema: Schema) -> DataverseError:
    """The 403 Dataverse answers, shaped like the real message (principal, privilege, table)."""
    privilege = privilege_name(verb, entity)
    privilege_id = uuid.uuid5(_PRIVILEGE_IDS, privilege)
    return DataverseError(
        403, PRIVILEGE_DENIED,
        f"Principal user (Id={access.user_id}, type={SYSTEMUSER_TYPE_CODE}, roleCount={len(access.roles)}, "
        f"privilegeCount={access.privilege_count(schema)}, accessMode={access.access_mode}), is missing "
        f"{privilege} privilege (Id={privilege_id}) on OTC={object_type_code(entity)} for entity '{entity.name}' "
        f"(LocalizedName='{entity.display_name or entity.name}'). context.Caller={access.user_id}",
    )


IMPERSONATION_PRIVILEGE = "prvActOnBehalfOfAnotherUser"


def misc_privilege_denied(access: Access, privilege: str, schema: Schema) -> DataverseError:
    """The 403 for a privilege on no table (acting on behalf of another user, say)."""
    privilege_id = uuid.uuid5(_PRIVILEGE_IDS, privilege)
    return DataverseError(
        403, PRIVILEGE_DENIED,
        f"Principal user (Id={access.user_id}, type={SYSTEMUSER_TYPE_CODE}, roleCount={len(access.roles)}, "
        f"privilegeCount={access.privilege_count(schema)}, accessMode={access.access_mode}), is missing "
        f"{privilege} privilege (Id={privilege_id}). context.Caller={access.user_id}",
    )
