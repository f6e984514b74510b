"""Microsoft Entra applications registered in BC, and the permission sets they hold.

A correctly signed token is not enough for BC: the app must also be registered (and enabled) on
BC's *Microsoft Entra Applications* page, or BC answers 401 as for bad credentials; what it may then
do is what its permission sets grant, per table: Read, Insert, Modify, Delete
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/administration/automation-apis-using-s2s-authentication).
Both come from the fixture (``applications``, ``permission_sets``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..odata.schema import EntityType
from .exceptions import BCError
from .tables import entity_info

ACTIONS = {"R": "Read", "I": "Insert", "M": "Modify", "D": "Delete"}
METHOD_ACTIONS = {"GET": "R", "POST": "I", "PATCH": "M", "PUT": "M", "DELETE": "D"}


@dataclass(frozen=True)
class Application:
    client_id: str
    display_name: str
    enabled: bool
    grants: Mapping[str, frozenset[str]]  # table caption or "*" → permission letters (R, I, M, D)

    def allows(self, letter: str, entity: EntityType) -> bool:
        caption = _caption(entity)
        return letter in self.grants.get(caption, frozenset()) or letter in self.grants.get("*", frozenset())


def load_applications(data: Mapping[str, Any]) -> dict[str, Application]:
    """The fixture's registered apps by client id, their permission sets resolved."""
    sets = data.get("permission_sets", {})
    if not isinstance(sets, dict):
        raise ValueError("'permission_sets' must be an object of permission set name → {table: 'RIMD'}")
    apps: dict[str, Application] = {}
    for item in data.get("applications", []):
        if not isinstance(item, dict):
            raise ValueError("'applications' must be a list of objects")
        grants: dict[str, set[str]] = {}
        for name in item.get("permission_sets", []):
            if name not in sets:
                raise ValueError(f"application {item.get('display_name')!r}: unknown permission set {name!r}")
            for table, letters in sets[name].items():
                if not isinstance(letters, str) or set(letters) - set(ACTIONS):
                    raise ValueError(f"permission set {name!r}: {table!r} must map to letters of 'RIMD'")
                grants.setdefault(table, set()).update(letters)
        client_id = str(uuid.UUID(item["client_id"]))
        apps[client_id] = Application(client_id, item.get("display_name", ""), item.get("state", "Enabled") == "Enabled",
                                      {t: frozenset(v) for t, v in grants.items()})
    return apps


def permission_denied(letter: str, entity: EntityType) -> BCError:
    """BC's refusal: 403 with the platform's text naming the table data and the permission."""
    return BCError(403, "Internal_ServerError",
                   f"Sorry, the current permissions prevented the action. (TableData {_caption(entity)} "
                   f"{ACTIONS[letter]}: Base Application)")


def _caption(entity: EntityType) -> str:
    return entity_info(entity).caption
