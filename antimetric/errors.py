"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class AntimetricError(Exception):
    """Bad input or environment; the message names what is wrong and how to fix it."""


class ConfigError(AntimetricError):
    """An option or a combination of options that cannot work."""


class DatasetLayoutError(AntimetricError):
    """A dataset folder that does not hold the files of its official layout."""
