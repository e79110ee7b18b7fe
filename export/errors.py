"""Errors of the court export; each message is one line."""


class ExportError(Exception):
    """Export failed or was refused; the message is one line."""

    exit_code = 1


class ExportRefused(ExportError):
    """The evidence does not verify, so nothing was exported. ``problems`` names each failure."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"verification failed ({len(problems)} problem{'s' * (len(problems) != 1)}); "
                         "nothing exported")
        self.problems = problems
