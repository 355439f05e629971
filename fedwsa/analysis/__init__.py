"""The papers' analyses of why weight averaging works, on the models of a finished run
(``fedwsa analyze``; METHODS.md section 3)."""

from fedwsa.analysis.report import ANALYSES, BETWEEN, analyze

__all__ = ["ANALYSES", "BETWEEN", "analyze"]
