"""The one error type for bad input: names the field, says the fix, exits 2 before anything runs."""


class SpecError(ValueError):
    """A job spec, profile or flag that cannot run; the message is one line: field, problem, fix."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}; {fix}")
