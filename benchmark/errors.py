"""The one base of the errors a user can fix: bad input, missing or damaged data, an unusable
store. The CLI prints such an error's message as one line and exits 2; every other exception
is a bug or a fault and keeps its traceback. And the one category of tailbench's own warnings,
which the console shows as one line."""


class UserError(Exception):
    """Something the user can act on; the message says what, where, and what to do."""


class DataWarning(UserWarning):
    """Something a user should know that does not stop the run (a copy of a dataset that
    differs from the official files); the console prints it as `tailbench: warning: ...`."""
