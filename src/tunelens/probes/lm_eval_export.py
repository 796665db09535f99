"""Export the conflict suites as lm-evaluation-harness tasks (``lm_eval --include_path DIR``).

For each conflict set NAME this writes ``NAME.jsonl`` (the items in tunelens' schema), and two tasks:

* ``tunelens_NAME_loglik`` (multiple_choice over [context answer, memory answer]; ``acc`` is the
  context-preference rate of tunelens' loglik mode, up to lm-eval's tokenisation of continuations);
* ``tunelens_NAME_gen`` (generate_until a blank line; ``ctx_rate``/``param_rate``/``neither_rate``
  computed by ``utils.process_results`` with tunelens' own normalised-containment classifier).

Prompts are tunelens' ``raw`` variant: ``Context: {context}\\nQuestion: {question}\\nAnswer:``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tunelens.probes.items import load_conflicts

PROMPT = "Context: {{context}}\\nQuestion: {{question}}\\nAnswer:"

UTILS = '''"""process_results for the tunelens conflict tasks (written by `tunelens probe export-lm-eval`)."""
from tunelens.probes.metrics import conflict_outcome


def process_results(doc, results):
    outcome = conflict_outcome(results[0], doc["answer"], doc["memory_answer"])
    return {"ctx_rate": float(outcome == "ctx"), "param_rate": float(outcome == "param"),
            "neither_rate": float(outcome == "neither")}
'''


def _task_yaml(name: str, data: Path, kind: str, max_gen_toks: int) -> str:
    head = (f"task: tunelens_{name}_{kind}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
            f"test_split: test\n"
            f'doc_to_text: "{PROMPT}"\n')
    if kind == "loglik":
        return head + ("output_type: multiple_choice\n"
                       'doc_to_choice: "{{[answer, memory_answer]}}"\n'
                       "doc_to_target: 0\n"
                       "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                       "metadata:\n  version: 1.0\n")
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: {str(m == 'ctx_rate').lower()}\n"
                      for m in ("ctx_rate", "param_rate", "neither_rate"))
    return head + ("output_type: generate_until\n"
                   'doc_to_target: "{{answer}}"\n'
                   f'generation_kwargs:\n  until: ["\\n\\n"]\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n'
                   "process_results: !function utils.process_results\n"
                   f"metric_list:\n{metrics}"
                   "metadata:\n  version: 1.0\n")


def export_tasks(out: str | Path, suites: Sequence[str] = ("world_facts", "capitals"), limit: int | None = None,
                 max_gen_toks: int = 24) -> list[Path]:
    """Write data, task YAMLs and ``utils.py`` for each conflict set; return the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in suites:
        items = load_conflicts(spec, limit=limit)
        name = Path(spec).stem if Path(spec).suffix else spec
        data = out / f"{name}.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for it in items:
                fh.write(json.dumps({"id": it.id, "context": it.context, "question": it.question,
                                     "answer": it.answer, "memory_answer": it.memory_answer}) + "\n")
        written.append(data)
        for kind in ("loglik", "gen"):
            path = out / f"tunelens_{name}_{kind}.yaml"
            path.write_text(_task_yaml(name, data, kind, max_gen_toks), encoding="utf-8")
            written.append(path)
    utils = out / "utils.py"
    utils.write_text(UTILS, encoding="utf-8")
    written.append(utils)
    return written
