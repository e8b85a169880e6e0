"""Errors that users cause and can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, env id, dataset, checkpoint, run directory).

    The message names the problem; ``fix`` names what to do about it. The CLI removes the run directory
    of a fresh run that fails this way, unless ``keep_outputs`` (what was written is worth keeping).
    """

    keep_outputs = False

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class ConfigError(UserError):
    """A config value or override that cannot work."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt, or does not fit the model."""


class DatasetError(UserError):
    """A dataset that is missing, malformed or does not fit the task (names the file and field)."""


class TrainingDiverged(UserError):
    """Training produced a non-finite loss (too high a learning rate, too short a warmup). The run's
    checkpoints are kept: resume from the last one with a lower rate, or inspect it."""

    keep_outputs = True


def fail(problem: str, fix: str | None = None, exc: BaseException | None = None, show_traceback: bool = False) -> int:
    """Print a user error as one line on stderr (the traceback too with ``show_traceback``); return exit code 2."""
    import sys
    import traceback

    if show_traceback and exc is not None:
        traceback.print_exception(exc)
    print(f"retain: error: {problem}" + (f" — {fix}" if fix else ""), file=sys.stderr)
    return 2
