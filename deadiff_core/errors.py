"""The errors a bad DEADiff file gives: what is wrong, with which file, and what to do."""

from __future__ import annotations

import os


class DEADiffCheckpointError(ValueError):
    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DEADiffUnsafeFileError(DEADiffCheckpointError):
    """A checkpoint whose pickle names a Python object that is not data (a hostile or tampered file).
    Nothing from it was run; `global_name` is what it names, `reason` is pickle_policy's CAN_RUN_CODE
    or NOT_ALLOWED, `where` says where in the file it sits."""

    def __init__(self, path, problem: str, global_name: str, reason: str, where: str):
        super().__init__(path, problem)
        self.global_name = global_name
        self.reason = reason
        self.where = where
