"""The one error every config check raises, so the CLI reports any bad field as one line."""


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field."""
