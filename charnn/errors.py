"""The one exception type that library code raises for mistakes a user can fix."""


class CharnnError(Exception):
    """A problem the user caused and can fix; the CLI prints it as one line and exits 1."""


class ConfigError(CharnnError):
    """A flag value out of range or inconsistent; the CLI treats it as a usage error (exit 2)."""
