"""The HTTP core both clients share: tokens from Entra ID (MSAL), TLS, retries, paging, errors.

Retries come from urllib3's ``Retry`` on the session's adapters, configured as Microsoft asks for
both services: back off and retry on 429 (service protection) and on 502/503/504, honouring
``Retry-After`` (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-rate-limits).
A request goes through the retrying session only when sending it twice is harmless: every write the
connector makes is idempotent by construction (client-chosen ids, upserts, ``If-Match``), and callers
mark the rare one that is not.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Self

import msal
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.retry import Retry

from .errors import AuthenticationError, ServiceError, TransportError, strip_correlation

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetrySettings:
    attempts: int = 8
    backoff_factor: float = 0.2
    backoff_max: float = 20.0
    timeout: float = 120.0


class _Retry(Retry):
    """urllib3's Retry, counting a TLS stream cut mid-request as the dropped connection it is.

    A server that closes the socket while the client is still writing surfaces as an SSL error
    ("EOF occurred in violation of protocol"), which urllib3 would not retry; certificate failures
    stay fatal at once.
    """

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> Self:
        if isinstance(error, Urllib3SSLError) and not _certificate_problem(error):
            error = ProtocolError("connection dropped during TLS", error)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _certificate_problem(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or any(
                isinstance(arg, ssl.SSLCertVerificationError) for arg in getattr(seen, "args", ())):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry(settings: RetrySettings, methods: frozenset[str] | None) -> Retry:
    return _Retry(
        total=settings.attempts,
        connect=settings.attempts,
        read=settings.attempts,
        status=settings.attempts,
        other=0,
        allowed_methods=methods,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=settings.backoff_factor,
        backoff_max=settings.backoff_max,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


class _PinnedSession(requests.Session):
    """A session whose ``verify`` is what the configuration says.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's ``verify`` for every
    request that does not pass one; the connector verifies against the configured CA only.
    """

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def make_session(verify: bool | str, retry: Retry) -> requests.Session:
    session = _PinnedSession()
    session.verify = verify
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=8)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class TokenSource:
    """Client-credentials tokens for one app registration, cached and refreshed by MSAL."""

    def __init__(self, *, authority: str, client_id: str, client_secret: str, verify: bool | str,
                 instance_discovery: bool = True) -> None:
        self._settings = {"client_id": client_id, "client_credential": client_secret, "authority": authority,
                          "instance_discovery": instance_discovery,
                          "http_client": make_session(verify, _retry(RetrySettings(attempts=3), None))}
        self._app: msal.ConfidentialClientApplication | None = None

    def token(self, scope: str, *, refresh: bool = False) -> str:
        try:
            if self._app is None:  # MSAL reads the authority's OpenID configuration when constructed
                self._app = msal.ConfidentialClientApplication(**self._settings)
            if refresh:
                self._app.remove_tokens_for_client()
            result = self._app.acquire_token_for_client([scope])
        except (requests.RequestException, ValueError) as error:
            raise TransportError(f"cannot reach the identity service at {self._settings['authority']}: "
                                 f"{_reason(error)}") from error
        if "access_token" not in result:
            raise AuthenticationError(str(result.get("error", "")), str(result.get("error_description", "")))
        return str(result["access_token"])


def _reason(error: Exception) -> str:
    """The innermost cause of a transport failure, in one line."""
    while error.__context__ is not None and isinstance(error.__context__, Exception):
        error = error.__context__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def query_options(*, filter: str | None = None, select: Iterable[str] | None = None,
                  orderby: str | None = None) -> dict[str, str]:
    """The system query options both services take, leaving out the ones not given."""
    params: dict[str, str] = {}
    if filter:
        params["$filter"] = filter
    if select:
        params["$select"] = ",".join(select)
    if orderby:
        params["$orderby"] = orderby
    return params


def error_from(service: str, method: str, url: str, response: requests.Response) -> ServiceError:
    """The service's own error envelope (``{"error": {"code", "message"}}``) as a ServiceError."""
    code, message = "", response.reason or ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", ""))
        message = strip_correlation(str(body["error"].get("message", message)))
    elif response.text:
        message = response.text.strip()[:500]
    return ServiceError(service, response.status_code, code, message, method, url)


class HttpCore:
    """One service's HTTP surface: authorized requests against its API root, paged reads."""

    def __init__(self, *, service: str, root: str, scope: str, tokens: TokenSource, verify: bool | str,
                 retries: RetrySettings | None = None, headers: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.root = root.rstrip("/")
        self.scope = scope
        self.tokens = tokens
        self.settings = retries or RetrySettings()
        self.headers = {"Accept": "application/json", **(headers or {})}
        self._retrying = make_session(verify, _retry(self.settings, None))
        self._once = make_session(verify, _retry(self.settings, Retry.DEFAULT_ALLOWED_METHODS))
        self.requests_sent = 0
        self._clock_offset: timedelta | None = None  # the service's clock minus ours, from its Date header

    def server_now(self) -> datetime | None:
        """The service's clock now (naive UTC), at the earliest its ``Date`` headers allow; None before its
        first answer. ``Date`` has whole seconds: a service within that second of our clock is taken to
        agree with it (our clock is finer). A pass uses it to cap its watermark on the source's clock when
        that runs ahead of ours."""
        if self._clock_offset is None:
            return None
        return datetime.now(UTC).replace(tzinfo=None) + self._clock_offset

    def _note_server_time(self, response: requests.Response) -> None:
        try:
            stamp = parsedate_to_datetime(response.headers["Date"])
        except (KeyError, TypeError, ValueError):
            return
        ours = datetime.now(UTC)
        stamp = stamp.astimezone(UTC) if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
        earliest = stamp - ours  # the service's clock was in [stamp, stamp + 1 s) when it answered
        self._clock_offset = timedelta(0) if earliest <= timedelta(0) < earliest + timedelta(seconds=1) else earliest

    def url(self, path: str) -> str:
        return path if "://" in path else f"{self.root}/{path.lstrip('/')}"

    def send(self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None,
             data: bytes | None = None, headers: Mapping[str, str] | None = None,
             idempotent: bool = True) -> requests.Response:
        """Send one request; raise ServiceError for any 4xx/5xx left after the retries."""
        url = self.url(path)
        session = self._retrying if idempotent else self._once
        response: requests.Response | None = None
        for attempt in (1, 2):  # a 401 gets one retry with a freshly acquired token
            all_headers = {**self.headers, "Authorization": f"Bearer {self.tokens.token(self.scope, refresh=attempt == 2)}",
                           **(headers or {})}
            try:
                self.requests_sent += 1
                response = session.request(method, url, params=params, json=json, data=data, headers=all_headers,
                                           timeout=self.settings.timeout)
            except requests.RequestException as error:
                raise TransportError(f"{self.service}: {method} {url.split('?')[0]} failed: {_reason(error)}") from error
            if response.status_code != 401:
                break
        assert response is not None
        self._note_server_time(response)
        if response.status_code >= 400:
            raise error_from(self.service, method, url, response)
        return response

    def get_one(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """One entity, or None when the service answers 404."""
        try:
            return dict(self.send("GET", path, params=params).json())
        except ServiceError as error:
            if error.is_not_found:
                return None
            raise

    def pages(self, path: str, params: Mapping[str, str] | None = None, *, page_size: int,
              headers: Mapping[str, str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Follow ``@odata.nextLink`` page by page, so memory holds one page at a time."""
        prefer = {"Prefer": f"odata.maxpagesize={page_size}", **(headers or {})}
        url: str | None = self.url(path)
        query = dict(params or {})
        while url:
            body = self.send("GET", url, params=query or None, headers=prefer).json()
            yield list(body.get("value", []))
            url, query = body.get("@odata.nextLink"), {}

    def rows(self, path: str, params: Mapping[str, str] | None = None, *, page_size: int,
             headers: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        for page in self.pages(path, params, page_size=page_size, headers=headers):
            yield from page
