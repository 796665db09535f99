"""Judge-free measures of instruction following, plus an optional LLM judge.

* IFEval (:mod:`tunelens.evals.ifeval`): rule-checked instructions, strict/loose, prompt/instruction level.
* Reference-answer log-likelihood and well-terminated rate (:mod:`tunelens.evals.refll`) on MT-Bench /
  Vicuna-bench questions with GPT-4 reference answers.
* LLM judge (:mod:`tunelens.evals.judge`), 1-10 ratings through any synthesis teacher.

CLI: ``tunelens eval ifeval|refll|judge --model M --out DIR``.
"""
from tunelens.evals.generation import (Answer, GenerationSettings, answer_conversations, answer_prompts,
                                       termination_stats)
from tunelens.evals.ifeval import (IFEvalItem, IFEvalScore, aggregate, evaluate_ifeval, load_ifeval, score_response,
                                   score_responses)
from tunelens.evals.io import save_results
from tunelens.evals.judge import (JudgeItem, evaluate_judge, judge_answers, load_judge_items, load_judge_prompts,
                                  parse_rating)
from tunelens.evals.refll import RefItem, load_reference_items, reference_loglik, reference_termination

__all__ = ["Answer", "GenerationSettings", "IFEvalItem", "IFEvalScore", "JudgeItem", "RefItem", "aggregate",
           "answer_conversations", "answer_prompts", "evaluate_ifeval", "evaluate_judge", "judge_answers",
           "load_ifeval", "load_judge_items", "load_judge_prompts", "load_reference_items", "parse_rating",
           "reference_loglik", "reference_termination", "save_results", "score_response", "score_responses",
           "termination_stats"]
