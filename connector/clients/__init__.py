"""HTTP clients for Dataverse and Business Central on one shared core (auth, TLS, retries, paging)."""

from .batch import BatchOp, BatchResult
from .bc import BCClient
from .dataverse import DataverseClient
from .errors import AuthenticationError, ClientError, ServiceError, TransportError
from .http import HttpCore, RetrySettings, TokenSource

__all__ = [
    "AuthenticationError",
    "BCClient",
    "BatchOp",
    "BatchResult",
    "ClientError",
    "DataverseClient",
    "HttpCore",
    "RetrySettings",
    "ServiceError",
    "TokenSource",
    "TransportError",
]
