"""User-facing errors: each message is one line that says what is wrong and how to fix it."""


class PlatformError(Exception):
    """Base class of errors a job reports as its one-line failure reason."""


class ConfigError(PlatformError):
    """A configuration file or ``--set`` override is invalid."""


class EnvironmentProblem(PlatformError):
    """The machine lacks something the platform needs (Java, the right Python)."""


class SchemaError(PlatformError):
    """An input table does not match its contract."""


class DataQualityError(PlatformError):
    """Too many rows failed validation, or an output failed its pre-commit checks."""


class TableNotFound(PlatformError):
    """A Delta table, partition or version does not exist."""
