"""Evaluation of any HF causal LM object (patched or not): perplexity, held-out answer loss, multiple-choice
accuracy (each keeps its per-item values: ``stats`` gives bootstrap intervals over items and paired tests), and an
lm-eval adapter (lm-eval, an optional dependency, is imported only when the adapter runs). The names below are the
user API (docs/ARCHITECTURE.md, "Public API"); the per-token log-likelihoods and the tests' primitives stay in
``loglik``, ``multiple_choice``, ``stats`` and ``lm_eval_adapter``."""

from .lm_eval_adapter import lm_eval_accuracy
from .multiple_choice import MCResult, multiple_choice_accuracy
from .perplexity import LossResult, answer_loss, mean_nll, perplexity
from .stats import Comparison, Estimate, bootstrap_ci, compare_accuracy, compare_loss

__all__ = [
    "Comparison", "Estimate", "LossResult", "MCResult", "answer_loss", "bootstrap_ci", "compare_accuracy",
    "compare_loss", "lm_eval_accuracy", "mean_nll", "multiple_choice_accuracy", "perplexity",
]
