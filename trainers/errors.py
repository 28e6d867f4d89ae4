"""Errors a user can fix. The CLI prints ``error: <message>`` on one line and exits 2."""


class StuneError(Exception):
    """Bad input: the message names the field and the fix."""


class ConfigError(StuneError):
    pass


class DataError(StuneError):
    pass


class ModelError(StuneError):
    pass


class TrainingError(StuneError):
    """A fine-tune that cannot go on (NaN loss, out of memory); the message carries a hint."""
