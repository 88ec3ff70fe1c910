"""When to try a request again and how long to wait first: the one decision both clients share."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import httpx

from yolo_triton_client.errors import ApiError, TransportError, error_from_response

log = logging.getLogger("yolo_triton_client")

RETRY_STATUSES = frozenset({429, 503})  # the statuses the server marks as temporary (with Retry-After)
# No answer arrived, or the connection broke: a prediction is a pure function of its inputs, so sending it again is
# safe. A read timeout is not retried: the server may still be working on it, and the caller chose the timeout.
RETRY_EXCEPTIONS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
# A request that must not reach the server twice (an upload: a second one is a second version) is sent again only
# when no connection was made.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # attempts after the first
    max_wait: float = 30.0  # longest single wait; a longer Retry-After is not waited for (the error is raised)
    backoff: float = 0.5  # first wait without Retry-After (connection errors), doubled each retry, with jitter

    def after_response(self, attempt: int, response: httpx.Response) -> float:
        """Seconds to wait before retrying the failed `response`; raises its ApiError when it should not be retried."""
        error = error_from_response(response)
        if error.status not in RETRY_STATUSES or attempt >= self.retries:
            raise error
        wait = error.retry_after if error.retry_after is not None else self._backoff(attempt)
        if wait > self.max_wait:
            raise error
        self._log(response.request, attempt, wait, error)
        return wait

    def after_exception(self, attempt: int, exc: httpx.HTTPError, resend: bool = True) -> float:
        """Seconds to wait before retrying after a transport error; raises TransportError when giving up. `resend`:
        False for a request the server may have received (only a failed connection is retried then)."""
        if not isinstance(exc, RETRY_EXCEPTIONS if resend else NOT_SENT) or attempt >= self.retries:
            raise TransportError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        wait = min(self._backoff(attempt), self.max_wait)
        self._log(exc.request, attempt, wait, exc)
        return wait

    def start(self, resend: bool = True) -> Retrying:
        """The retries of one request (`resend`: see `after_exception`)."""
        return Retrying(self, resend=resend)

    def _backoff(self, attempt: int) -> float:
        return self.backoff * 2.0**attempt * random.uniform(0.5, 1.0)  # jitter: clients that failed together spread out

    def _log(self, request: httpx.Request, attempt: int, wait: float, cause: ApiError | httpx.HTTPError) -> None:
        log.info(
            "retrying %s %s in %.2f s (retry %d of %d) after %s",
            request.method, request.url.path, wait, attempt + 1, self.retries, repr(cause),
        )  # fmt: skip


@dataclass
class Retrying:
    """One request's attempts under a policy, told each attempt's outcome by the client that made it (sync or async):
    what to do next is decided here, the waiting and sending are the client's."""

    policy: RetryPolicy
    attempt: int = 0
    resend: bool = True

    def after(self, outcome: httpx.Response | httpx.HTTPError) -> httpx.Response | ApiError | float:
        """A successful response; else the seconds to wait before the next attempt; else (no more attempts) the
        refusal's ApiError, or TransportError raised when no answer came."""
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            return outcome
        try:
            if isinstance(outcome, httpx.Response):
                return self.policy.after_response(self.attempt, outcome)
            return self.policy.after_exception(self.attempt, outcome, self.resend)
        except ApiError as error:
            return error
        finally:
            self.attempt += 1

    def wait(self, failed: httpx.Response | httpx.HTTPError) -> float:
        """The seconds to wait after a failed attempt; raises its ApiError (or TransportError) when it was the last."""
        decided = self.after(failed)
        if isinstance(decided, ApiError):
            raise decided
        assert isinstance(decided, float)  # a failed attempt: never the successful response
        return decided
