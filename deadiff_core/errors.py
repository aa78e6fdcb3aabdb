"""The one error a bad DEADiff file gives: what is wrong, with which file, and what to do."""
from __future__ import annotations

import os


class DEADiffCheckpointError(ValueError):
    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
