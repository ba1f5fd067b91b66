"""Evaluation of any HF causal LM object (patched or not): perplexity, held-out answer loss, multiple-choice
accuracy (each keeps its per-item values: ``stats`` gives bootstrap intervals over items and paired tests), and an
lm-eval adapter (lm-eval, an optional dependency, is imported only when the adapter runs)."""

from .lm_eval_adapter import lm_eval_accuracy, write_lm_eval_task
from .loglik import batch_nll, batch_nll_rows, continuation_logprobs
from .multiple_choice import MCResult, multiple_choice_accuracy, multiple_choice_loglikelihoods
from .perplexity import LossResult, answer_loss, mean_nll, perplexity
from .stats import Comparison, Estimate, bootstrap_ci, compare_accuracy, compare_loss, mcnemar_exact, paired_bootstrap

__all__ = [
    "LossResult", "mean_nll", "perplexity", "answer_loss",
    "MCResult", "multiple_choice_accuracy", "multiple_choice_loglikelihoods",
    "batch_nll", "batch_nll_rows", "continuation_logprobs",
    "Estimate", "Comparison", "bootstrap_ci", "paired_bootstrap", "mcnemar_exact", "compare_accuracy", "compare_loss",
    "write_lm_eval_task", "lm_eval_accuracy",
]
