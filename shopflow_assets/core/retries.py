"""How transient faults are retried: one policy for every step, exponential backoff with jitter.

Attempt k waits (2^k - 1) x delay +/- delay: with the default 2 s, about 2, 6, 14, 30 s. Permanent
faults raise `Failure(allow_retries=False)` and are never retried. Retrying is safe because every
step replaces exactly its partition window in one transaction.
"""

import contextlib
from typing import Iterator

from dagster import Backoff, DagsterExecutionInterruptedError, Failure, Jitter, RetryPolicy


def transient_retry_policy(max_retries: int, delay_seconds: float) -> RetryPolicy:
    """The policy of every step (SHOPFLOW_RETRY_MAX_RETRIES, SHOPFLOW_RETRY_DELAY_SECONDS)."""
    return RetryPolicy(max_retries=max_retries, delay=delay_seconds, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


@contextlib.contextmanager
def not_retried_when_cancelled(what: str) -> Iterator[None]:
    """A cancelled run interrupts its step, and Dagster retries an interrupted step under its retry
    policy: the cancelled run would start the work again. The step fails instead, not retried (the
    run then ends CANCELED); what it had done is left as a failed attempt leaves it."""
    try:
        yield
    except DagsterExecutionInterruptedError:
        raise Failure(
            description=f"{what} was interrupted: the run was cancelled. Not retried; re-run to build it.",
            allow_retries=False,
        ) from None
