"""Errors a user can act on.

Every failure that bad input can cause is raised as a `PeaError` carrying the problem and the fix; the CLI
prints it as one line and exits non-zero, so nobody has to read a traceback to learn what to change.
"""

import re

# the password of a URI's user part (scheme://user:password@host): up to the authority's last '@'
_PASSWORD = re.compile(r"(?P<user>\b[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*):[^/?#\s]*@")


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***: URIs (MLflow's, S3's) are printed, logged
    and embedded in pages, their passwords never."""
    return _PASSWORD.sub(r"\g<user>:***@", text)


class PeaError(Exception):
    """A problem the user can fix, with the fix. Both are shown, so neither keeps a URI's password."""

    def __init__(self, problem: str, fix: str | None = None):
        problem, fix = redact(problem), fix and redact(fix)
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __reduce__(self):
        # survives pickling (Ray sends worker exceptions to the driver)
        return (PeaError, (self.problem, self.fix))

    def __str__(self) -> str:
        return f"{self.problem} -- {self.fix}" if self.fix else self.problem
