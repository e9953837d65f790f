"""One exception type for mistakes a user can fix.

Anything raised as `UserError` is printed by the CLI as a single line
(`minimind: error: <message>`) with exit code 2, and by the server as an
HTTP 400 with an OpenAI-style error body. The message must say *what* is wrong,
*where* (file:line, field, flag or request parameter) and, if possible, what to do.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2 / HTTP 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param  # the request parameter / flag at fault, if any
