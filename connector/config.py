"""Connector configuration: a TOML file, environment variables, or a sandbox's ``sandbox.json``.

Every value can come from the file or from ``CONNECTOR_<SECTION>_<KEY>`` (``CONNECTOR_IDENTITY_CLIENT_SECRET``),
the environment winning, so a secret never has to be written to disk. Pointing the connector at the
real services is a matter of values: the Entra ID authority
(``https://login.microsoftonline.com/<tenant>``), the Dataverse org URL, the BC API root, the app's
client id and secret, and the BC company id.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

DEFAULT_PATH = Path("connector.toml")
BC_RESOURCE_SCOPE = "https://api.businesscentral.dynamics.com/.default"
CUSTOM_API = "bcsandbox/integration/v1.0"


class ConfigError(Exception):
    """The configuration is missing, unreadable or incomplete (one line for the user)."""


@dataclass(frozen=True)
class Config:
    authority: str
    client_id: str
    client_secret: str
    dataverse_url: str
    bc_api_root: str
    company_id: str
    company_name: str = ""
    bc_custom_api_root: str | None = None
    bc_scope: str = BC_RESOURCE_SCOPE
    local_currency_code: str = "USD"
    ca_bundle: str | None = None
    instance_discovery: bool = True
    state_url: str = "sqlite:///connector.state.db"
    page_size: int = 500
    dataverse_batch_size: int = 500
    bc_batch_size: int = 100
    retries: int = 8  # attempts per request on 429/502/503/504 and connection errors
    path: Path | None = None

    @property
    def dataverse_api_root(self) -> str:
        return self.dataverse_url.rstrip("/") + "/api/data/v9.2"

    @property
    def dataverse_scope(self) -> str:
        return self.dataverse_url.rstrip("/") + "/.default"

    @property
    def verify(self) -> bool | str:
        return self.ca_bundle or True


# (section, key) -> (Config field, type); the file layout users see.
_LAYOUT: dict[tuple[str, str], tuple[str, type]] = {
    ("identity", "authority"): ("authority", str),
    ("identity", "client_id"): ("client_id", str),
    ("identity", "client_secret"): ("client_secret", str),
    ("identity", "instance_discovery"): ("instance_discovery", bool),
    ("dataverse", "url"): ("dataverse_url", str),
    ("bc", "api_root"): ("bc_api_root", str),
    ("bc", "custom_api_root"): ("bc_custom_api_root", str),
    ("bc", "scope"): ("bc_scope", str),
    ("bc", "company_id"): ("company_id", str),
    ("bc", "company_name"): ("company_name", str),
    ("bc", "local_currency_code"): ("local_currency_code", str),
    ("tls", "ca_bundle"): ("ca_bundle", str),
    ("state", "url"): ("state_url", str),
    ("sync", "page_size"): ("page_size", int),
    ("sync", "dataverse_batch_size"): ("dataverse_batch_size", int),
    ("sync", "bc_batch_size"): ("bc_batch_size", int),
    ("sync", "retries"): ("retries", int),
}
_REQUIRED = ("authority", "client_id", "client_secret", "dataverse_url", "bc_api_root", "company_id")


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if kind is int and isinstance(value, str):
        if not value.isdigit():
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def resolve_path(path: Path | None) -> Path:
    if path is not None:
        return path
    return Path(os.environ.get("CONNECTOR_CONFIG", DEFAULT_PATH))


def load(path: Path | None = None) -> Config:
    """Read the config file (if any) and apply the environment on top."""
    path = resolve_path(path)
    document: dict[str, Any] = {}
    if path.is_file():
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    values: dict[str, Any] = {}
    for (section, key), (name, kind) in _LAYOUT.items():
        env = os.environ.get(f"CONNECTOR_{section}_{key}".upper())
        raw = env if env is not None else document.get(section, {}).get(key)
        if raw is not None:
            values[name] = _coerce(raw, kind, f"{section}.{key}")
    missing = [f"{s}.{k}" for (s, k), (name, _) in _LAYOUT.items() if name in _REQUIRED and name not in values]
    if missing:
        where = str(path) if path.is_file() else f"{path} (not found) or the environment"
        raise ConfigError(f"missing configuration in {where}: {', '.join(missing)}; "
                          "run `connector init --sandbox DATA_DIR` or set CONNECTOR_* variables")
    state_url = values.get("state_url", f"sqlite:///{path.stem}.state.db")
    values["state_url"] = _anchor_sqlite(state_url, path.parent)
    return Config(path=path, **values)


def _anchor_sqlite(url: str, base: Path) -> str:
    """A relative SQLite path is relative to the config file, not to the working directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def from_sandbox(data_dir: Path, company: str | None) -> dict[str, Any]:
    """A config document for a sandbox started with ``mockservers serve --data-dir DATA_DIR``."""
    info_path = data_dir / "sandbox.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{info_path} not found; start the sandbox first (make sandbox)") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{info_path}: not valid JSON ({error})") from None
    companies = info["bc"]["companies"]
    if company is None:
        chosen = companies[0]
    else:
        chosen = next((c for c in companies if company.lower() in (c["id"].lower(), c["name"].lower())), None)
        if chosen is None:
            names = ", ".join(c["name"] for c in companies)
            raise ConfigError(f"no BC company {company!r} in the sandbox (companies: {names})")
    bc_api = info["bc"]["api_root"]
    document: dict[str, Any] = {
        "identity": {"authority": info["identity"]["authority"], "client_id": info["app"]["client_id"],
                     "client_secret": info["app"]["client_secret"], "instance_discovery": False},
        "dataverse": {"url": info["dataverse"]["url"]},
        "bc": {"api_root": bc_api, "custom_api_root": bc_api.replace("/api/v2.0", f"/api/{CUSTOM_API}"),
               "scope": info["bc"].get("scope", BC_RESOURCE_SCOPE), "company_id": chosen["id"],
               "company_name": chosen["name"]},
    }
    if info.get("ca_bundle"):
        document["tls"] = {"ca_bundle": info["ca_bundle"]}
    return document


def write(path: Path, document: dict[str, Any]) -> None:
    """Write a config file readable by its owner only (it holds the client secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(tomli_w.dumps(document))
