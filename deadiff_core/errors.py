"""The one error a bad DEADiff file gives: what is wrong, with which file, and what to do."""


class DEADiffCheckpointError(ValueError):
    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
