"""Errors that carry EVERY problem found, so a user fixes a config or a dataset in one pass, not ten."""

from __future__ import annotations

from dataclasses import dataclass

from longcat.errors import InvalidArgument, LongCatError

# A message listing thousands of missing files helps nobody: show this many, count the rest.
MAX_LISTED = 50


@dataclass(frozen=True)
class Problem:
    field: str     # the config key or dataset field at fault, e.g. "learning_rate", "datasets[edit-images]"
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class _ProblemList(InvalidArgument):
    """An ``InvalidArgument`` whose ``field`` is the first problem's; ``problems`` holds all of them."""

    what = "problems"

    def __init__(self, problems: list[Problem], source: str | None = None):
        if not problems:
            raise ValueError("an error needs at least one problem")
        self.problems = list(problems)
        self.source = source
        super().__init__(problems[0].message, problems[0].field)
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} {self.what}{where}:" if len(problems) > 1 else f"{self.what[:-1]}{where}:"]
        lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        self.args = ("\n".join(lines),)  # str(exc): the whole list, not just the first problem

    def messages(self) -> list[str]:
        return [str(p) for p in self.problems]


class ConfigError(_ProblemList):
    """Wrong values in a training config or the structure of a dataloader config."""

    what = "config problems"


class DatasetError(_ProblemList):
    """Datasets that cannot be trained on: unmatched pairs, missing captions, undecodable images..."""

    what = "dataset problems"


class TrainingFailed(LongCatError):
    """Training started but could not go on (a non-finite loss, say)."""
