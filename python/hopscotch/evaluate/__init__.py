"""Evaluation of any HF causal LM object (patched or not): perplexity, held-out answer loss, multiple-choice
accuracy, and an lm-eval adapter (lm-eval, an optional dependency, is imported only when the adapter runs)."""

from .lm_eval_adapter import lm_eval_accuracy, write_lm_eval_task
from .loglik import batch_nll, continuation_logprobs
from .multiple_choice import MCResult, multiple_choice_accuracy, multiple_choice_loglikelihoods
from .perplexity import LossResult, answer_loss, mean_nll, perplexity

__all__ = [
    "LossResult", "mean_nll", "perplexity", "answer_loss",
    "MCResult", "multiple_choice_accuracy", "multiple_choice_loglikelihoods",
    "batch_nll", "continuation_logprobs",
    "write_lm_eval_task", "lm_eval_accuracy",
]
