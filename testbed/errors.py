"""The one exception type the CLI turns into a clean message."""


class TestbedError(Exception):
    """An error the user can act on; the message says what to do."""
