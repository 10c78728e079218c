"""The one exception type a user can cause and fix.

Library code raises :class:`UserError` with a one-line message that names the
input and the fix; ``cli.py`` turns it into a ``click.ClickException``.
"""


class UserError(Exception):
    """A problem with the user's input, flags or environment (not a bug)."""
