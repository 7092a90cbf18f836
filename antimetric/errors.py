"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class AntimetricError(Exception):
    """Bad input or environment; the message names what is wrong and how to fix it."""


class ConfigError(AntimetricError):
    """An option or a combination of options that cannot work."""


class DatasetLayoutError(AntimetricError):
    """A dataset folder that does not hold the files of its official layout."""


class NonFiniteLossError(AntimetricError):
    """Training diverged: the loss became NaN or infinite."""


class AntimetricWarning(UserWarning):
    """Something the user should know of a result; the CLI prints it as one line, `warning: ...`."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; says where it can be resumed from (last_epoch 0: nothing to resume)."""

    def __init__(self, run_dir, last_epoch: int) -> None:
        super().__init__(f"interrupted after epoch {last_epoch} of {run_dir}")
        self.run_dir, self.last_epoch = run_dir, last_epoch
