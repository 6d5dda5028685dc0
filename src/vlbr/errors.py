"""The exceptions vlbr raises across layers."""


class VlbrError(Exception):
    """Base of every error vlbr reports to a user."""


class CpuidFormatError(VlbrError):
    """A CPUID source could not be read; the message names the file and line."""

    def __init__(self, source: str, line: int | None, problem: str):
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
