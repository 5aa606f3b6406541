"""What every CLI command shares without loading the HTTP client: the default API URL, exit codes, the error type."""

from __future__ import annotations

DEFAULT_API = "http://127.0.0.1:3000"

# Exit codes: 1 = the job failed or the stack did (unreachable, 5xx); 2 = what was asked is wrong (4xx, bad input).
EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2


class CliError(Exception):
    """One line for the user, and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.message = message
        self.code = code
