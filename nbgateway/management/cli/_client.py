"""The REST client of ``nbgateway-admin`` and its error types.

Standard library only (``urllib``).  Every failure becomes a :class:`CliError`
whose message is one line that says what failed and what to do about it; the
CLI prints it and exits with the error's code (2 for usage errors, 1 for
everything else).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:33071"
DEFAULT_DATADIR = "nbgateway-data"
DEFAULT_TOKEN_FILE = os.path.join(DEFAULT_DATADIR, "admin-token")
TIMEOUT = 30.0

#: exit status of a usage error (bad flag, missing argument, no token)
USAGE = 2
#: exit status of any other failure
FAILURE = 1


class CliError(Exception):
    """A failure to report on stderr (one line) with exit status ``code``."""

    #: True when waiting and retrying may help (management not up yet)
    retryable = False

    def __init__(self, message: str, code: int = FAILURE):
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(CliError):
    """Bad command line: exit status 2."""

    def __init__(self, message: str):
        super().__init__(message, USAGE)


class UnreachableError(CliError):
    """Management did not answer (refused, timed out, DNS): worth retrying."""

    retryable = True


class Client:
    """Minimal REST client: JSON in, JSON (or bytes) out, envelope errors raised.

    ``token_source`` names where the token came from (``--token``,
    ``NB_ADMIN_TOKEN`` or the token file's path) so a 401 says which one
    management rejected."""

    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT,
                 token_source: str = "--token", sleep: Any = time.sleep):
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.token_source = token_source
        #: waits out a 429 (injected by tests)
        self.sleep = sleep

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        url = self.base + "/api" + path
        if query:
            clean = {k: v for k, v in query.items() if v is not None}
            if clean:
                url += "?" + urllib.parse.urlencode(clean)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
                break
            except urllib.error.HTTPError as exc:
                # the account's REST rate limit: refused before the handler ran
                # (nothing done), so any method is retried after Retry-After
                wait = _retry_after(exc) if exc.code == 429 else None
                if wait is None or attempt == RATE_LIMIT_RETRIES:
                    raise CliError(self._http_error(exc)) from None
                self.sleep(wait)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise UnreachableError(
                    f"cannot reach management at {self.base}: {reason} (is it "
                    "running? check --url / NB_ADMIN_URL)") from None
        if raw:
            return payload
        try:
            return json.loads(payload) if payload.strip() else None
        except ValueError:
            raise CliError(f"{self.base} answered {method} {path} with something that is "
                           "not JSON (is --url the management REST API?)") from None

    def _http_error(self, exc: urllib.error.HTTPError) -> str:
        text = _error_text(exc)
        if exc.code == 401:
            return (f"management rejected the token from {self.token_source}: {text}; "
                    "pass a valid one with --token or NB_ADMIN_TOKEN")
        return text

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


#: how often one call waits out the account's REST rate limit (HTTP 429)
RATE_LIMIT_RETRIES = 5
#: the longest Retry-After the client waits (longer: the 429 is the answer)
MAX_RETRY_AFTER = 30.0


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """Seconds to wait before retrying a 429 (its ``Retry-After`` in
    seconds, 1 when absent); None when it asks for longer than
    :data:`MAX_RETRY_AFTER` or cannot be read."""
    raw = (exc.headers.get("Retry-After") if exc.headers is not None else None) or "1"
    try:
        wait = float(raw)
    except ValueError:
        return None
    return wait if 0 <= wait <= MAX_RETRY_AFTER else None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        message = body.get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    return f"{str(message).splitlines()[0] if message else exc.reason} (HTTP {exc.code})"


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def find_token(explicit: str | None, environ: Any = None,
               path: str = DEFAULT_TOKEN_FILE) -> tuple[str | None, str]:
    """(token, where it came from): ``--token``, else ``NB_ADMIN_TOKEN``, else
    the token file (its absolute path is the source)."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit.strip(), "--token"
    if env.get("NB_ADMIN_TOKEN"):
        return env["NB_ADMIN_TOKEN"].strip(), "NB_ADMIN_TOKEN"
    source = os.path.abspath(path)
    try:
        with open(path) as f:
            return f.read().strip() or None, source
    except OSError:
        return None, source
