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


class Interrupted(KeyboardInterrupt):
    """Work stopped by Ctrl-C or SIGTERM (how SLURM and Kubernetes stop a job); ``exit_code`` is the
    shell's for that signal: 130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, signum: int = 2):
        import signal

        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(self.signal_name)
        self.exit_code = 128 + int(signum)
