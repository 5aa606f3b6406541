"""How the workflow calls node-plane activities: retry policies from the manifest, failures as (message, code)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.inputs import ServiceRuntime

NON_RETRYABLE = ["ContractError", "InvalidParams", "InvalidManifest"]


def retry_policy(runtime: ServiceRuntime) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=runtime.initial_interval_seconds),
        backoff_coefficient=runtime.backoff_coefficient,
        maximum_attempts=runtime.max_attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )


def failure_message(error: BaseException) -> tuple[str, str]:
    """The root cause of an activity failure as (message, code)."""
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    code = getattr(cause, "type", None) or type(cause).__name__
    return str(cause.message if hasattr(cause, "message") else cause), code
