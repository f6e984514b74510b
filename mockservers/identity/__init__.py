"""Mock Microsoft Entra ID: app registrations, RS256 access tokens, OIDC discovery and JWKS."""

from mockservers.identity.app import create_app
from mockservers.identity.exceptions import EntraError, InvalidToken
from mockservers.identity.keys import SigningKey, load_signing_key
from mockservers.identity.registrations import (
    BUSINESS_CENTRAL_RESOURCE,
    DEFAULT_FIXTURE,
    AppRegistration,
    Directory,
    load_default_directory,
)
from mockservers.identity.tokens import TokenIssuer, TokenValidator, bearer_challenge

__all__ = [
    "BUSINESS_CENTRAL_RESOURCE",
    "DEFAULT_FIXTURE",
    "AppRegistration",
    "Directory",
    "EntraError",
    "InvalidToken",
    "SigningKey",
    "TokenIssuer",
    "TokenValidator",
    "bearer_challenge",
    "create_app",
    "load_default_directory",
    "load_signing_key",
]
