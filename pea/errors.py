"""Errors a user can act on.

Every failure that bad input can cause is raised as a `PeaError` carrying the problem and the fix; the CLI
prints it as one line and exits non-zero, so nobody has to read a traceback to learn what to change.
"""


class PeaError(Exception):
    """A problem the user can fix, with the fix."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __reduce__(self):
        # survives pickling (Ray sends worker exceptions to the driver)
        return (PeaError, (self.problem, self.fix))

    def __str__(self) -> str:
        return f"{self.problem} -- {self.fix}" if self.fix else self.problem
