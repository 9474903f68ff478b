"""Config problems that point at the file, line, column and dotted field path."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Problem:
    mark: Mark
    path: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        kind = "warning: " if self.severity == "warning" else ""
        where = f"{self.path}: " if self.path else ""
        return f"{self.mark}: {kind}{where}{self.message}"


class ConfigError(Exception):
    """Raised with every problem found, so an operator fixes them all in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
