"""Evaluation of edits: precisely named metrics, per-case evaluation of every dataset format,
and batch / sequential experiments (this layer imports the editing layer, never the other way
round)."""

from interp_edit.evaluation.cases import aggregate, evaluate_cases, unrelated_metrics
from interp_edit.evaluation.commonsense import (
    CommonsenseScores,
    commonsense_efficacy,
    commonsense_scores,
    relapse_rate,
    statements_answered,
)
from interp_edit.evaluation.contrast import ContrastResult, contrast_study
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.evaluation.experiment import ExperimentResult, comparison_table
from interp_edit.evaluation.locality import RelationLocality, relation_locality, unedited_answers
from interp_edit.evaluation.logprobs import TokenScores, continuation_logprobs, score_continuations
from interp_edit.evaluation.metrics import (
    answered,
    counterfact_score,
    efficacy_magnitude,
    efficacy_score,
    generation_fluency,
    greedy_generate,
    mcq_accuracy,
    mcq_choices,
    multihop_accuracy,
    multihop_correct,
    neighborhood_magnitude,
    neighborhood_score,
    new_beats_true,
    ngram_entropy,
    option_entropy,
    option_probabilities,
    paraphrase_magnitude,
    paraphrase_score,
    token_accuracy,
)
from interp_edit.evaluation.ripple import RippleResult, known_tests_only, ripple_scores, ripple_study, toy_ripple_cases
from interp_edit.evaluation.runner import run_experiment
from interp_edit.evaluation.study import GapRippleStudy, gap_ripple_study

__all__ = [
    "GapRippleStudy",
    "gap_ripple_study",
    "known_tests_only",
    "RippleResult",
    "ripple_scores",
    "ripple_study",
    "toy_ripple_cases",
    "CommonsenseScores",
    "commonsense_efficacy",
    "commonsense_scores",
    "relapse_rate",
    "statements_answered",
    "ContrastResult",
    "contrast_study",
    "ExperimentResult",
    "RelationLocality",
    "TokenScores",
    "aggregate",
    "answered",
    "comparison_table",
    "continuation_logprobs",
    "counterfact_score",
    "counterfact_scores",
    "efficacy_magnitude",
    "efficacy_score",
    "evaluate_cases",
    "generation_fluency",
    "greedy_generate",
    "mcq_accuracy",
    "mcq_choices",
    "mean_scores",
    "multihop_accuracy",
    "multihop_correct",
    "neighborhood_magnitude",
    "neighborhood_score",
    "new_beats_true",
    "ngram_entropy",
    "option_entropy",
    "option_probabilities",
    "paraphrase_magnitude",
    "paraphrase_score",
    "relation_locality",
    "run_experiment",
    "score_continuations",
    "token_accuracy",
    "unedited_answers",
    "unrelated_metrics",
]
