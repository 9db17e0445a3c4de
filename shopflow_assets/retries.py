"""How transient faults are retried: one policy for every step, exponential backoff with jitter.

Attempt k waits (2^k - 1) x delay +/- delay: with the default 2 s, about 2, 6, 14, 30 s. Permanent
faults raise `Failure(allow_retries=False)` and are never retried. Retrying is safe because every
step replaces exactly its partition window in one transaction.
"""

from dagster import Backoff, Jitter, RetryPolicy

from shopflow_assets.settings import get_settings

TRANSIENT_RETRY_POLICY = RetryPolicy(
    max_retries=get_settings().retry_max_retries,
    delay=get_settings().retry_delay_seconds,
    backoff=Backoff.EXPONENTIAL,
    jitter=Jitter.PLUS_MINUS,
)
