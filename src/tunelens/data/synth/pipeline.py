"""``run_synth(cfg, out)``: sources -> clean -> chunk -> dedup -> split -> teacher (cached) -> filters -> JSONL.

Writes into ``out``: ``config.yaml`` (resolved), ``pairs.jsonl`` (``messages`` records with provenance, loadable
by :func:`tunelens.data.load_examples` and ``tunelens sft``), ``rejected.jsonl`` (every passage or pair that was
not kept, with its source id and reason), ``issues.jsonl`` (files/records that gave no document) and
``report.json`` (every count). The teacher cache (``teacher_cache.jsonl``) makes a rerun after a crash continue
where it stopped without repeating a finished request.
"""
from __future__ import annotations

import inspect
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tunelens.config import save_config
from tunelens.data.synth.cache import TeacherCache, request_key
from tunelens.data.synth.chunk import Passage, chunk_document, load_tokenizer
from tunelens.data.synth.clean import clean_text
from tunelens.data.synth.config import SynthConfig
from tunelens.data.synth.dedup import deduplicate
from tunelens.data.synth.filters import check_response, judge_instruction_like
from tunelens.data.synth.sources import SourceIssue, iter_documents
from tunelens.data.synth.split import Split, split_passage
from tunelens.data.synth.teachers import Teacher, TeacherRequest, TeacherResult, make_teacher
from tunelens.progress import progress_bar

__all__ = ["SynthResult", "run_synth", "build_pairs", "PairCandidate"]


@dataclass
class PairCandidate:
    """A passage split into user turn and real continuation, ready for the teacher."""

    passage: Passage
    split: Split
    request: TeacherRequest
    key: str = ""


@dataclass
class SynthResult:
    out: str
    pairs_path: str
    report_path: str
    report: dict[str, Any] = field(default_factory=dict)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def build_pairs(cfg: SynthConfig, tokenizer: Any, issues: list[SourceIssue], rejected: list[dict[str, Any]],
                counts: Counter) -> list[PairCandidate]:
    """Everything before the teacher: documents -> cleaned -> passages -> deduplicated -> sampled -> split."""
    passages: list[Passage] = []
    for doc in iter_documents(cfg.sources, issues):
        counts["documents"] += 1
        text = clean_text(doc.text, cfg.clean)
        if not text:
            issues.append(SourceIssue(doc.source_id, "empty", "no text left after cleaning"))
            continue
        got, dropped_tails = chunk_document(doc.source_id, text, tokenizer, cfg.chunk)
        counts["short_tail_pieces"] += dropped_tails
        if not got:
            counts["short_documents"] += 1
            rejected.append({"source_id": doc.source_id, "reason": "short_document",
                             "detail": f"fewer than chunk.min_tokens={cfg.chunk.min_tokens} tokens after cleaning"})
        passages.extend(got)
    counts["passages"] = len(passages)
    kept, dups = deduplicate(passages, cfg.dedup)
    for d in dups:
        counts[f"{d.kind}_duplicates"] += 1
        rejected.append({"source_id": d.passage_id.rsplit("#p", 1)[0], "passage_id": d.passage_id,
                         "reason": f"{d.kind}_duplicate", "duplicate_of": d.duplicate_of,
                         "similarity": d.similarity})
    if cfg.max_pairs is not None and len(kept) > cfg.max_pairs:
        chosen = set(random.Random(cfg.seed).sample(range(len(kept)), cfg.max_pairs))
        counts["not_sampled"] = len(kept) - cfg.max_pairs
        kept = [p for i, p in enumerate(kept) if i in chosen]
    pairs: list[PairCandidate] = []
    for p in kept:
        sp = split_passage(p.text, cfg.split, tokenizer)
        if sp is None:
            counts["short_passages"] += 1
            rejected.append({"source_id": p.source_id, "passage_id": p.passage_id, "reason": "too_short_to_split"})
            continue
        pairs.append(PairCandidate(p, sp, TeacherRequest(prompt=sp.prompt, reference=sp.continuation)))
    counts["pairs_to_complete"] = len(pairs)
    return pairs


def _complete_all(pairs: list[PairCandidate], teacher: Teacher, cache: TeacherCache, batch: int,
                  counts: Counter) -> dict[str, TeacherResult]:
    """Results by key: cached ones, then new ones in batches (each batch cached as soon as it finishes)."""
    results: dict[str, TeacherResult] = {}
    todo: list[PairCandidate] = []
    for pc in pairs:
        hit = cache.get(pc.key)
        if hit is not None:
            results[pc.key] = hit
        else:
            todo.append(pc)
    counts["cache_hits"] = len(results)
    unique = list({pc.key: pc for pc in todo}.values())
    t0, done = time.perf_counter(), 0
    streams = "on_result" in inspect.signature(teacher.complete).parameters
    with progress_bar(len(unique), f"synth ({teacher.name})", status="") as bar:
        for start in range(0, len(unique), batch):
            chunk = unique[start:start + batch]

            def store(i: int, r: TeacherResult, chunk: list[PairCandidate] = chunk) -> None:
                cache.put(chunk[i].key, r, {"source_id": chunk[i].passage.passage_id})

            reqs = [pc.request for pc in chunk]
            got = teacher.complete(reqs, on_result=store) if streams else teacher.complete(reqs)
            counts["requests_sent"] += len(chunk)
            cache.put_many((pc.key, r, {"source_id": pc.passage.passage_id}) for pc, r in zip(chunk, got))
            cache.sync()
            for pc, r in zip(chunk, got):
                results[pc.key] = r
                counts["teacher_attempts"] += r.attempts
            done += len(chunk)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            errs = sum(1 for pc in unique[:done] if not results[pc.key].ok)
            bar.advance(len(chunk), status=f"{rate:.2f} req/s, {errs} failed")
    return results


def _record(pc: PairCandidate, res: TeacherResult, cfg: SynthConfig, identity: dict[str, Any],
            fired: list[str]) -> dict[str, Any]:
    msgs = [{"role": "system", "content": cfg.system}] if cfg.system else []
    msgs += [{"role": "user", "content": pc.split.prompt}, {"role": "assistant", "content": res.text.strip()}]
    return {"messages": msgs, "provenance": {
        "source_id": pc.passage.source_id, "passage_id": pc.passage.passage_id,
        "passage_char": pc.passage.char_start, "split": pc.split.provenance(cfg.split),
        "teacher": identity, "finish_reason": res.finish_reason, "usage": res.usage,
        "instruction_rules": fired, "key": pc.key}}


def run_synth(cfg: SynthConfig, out: str | Path, *, teacher: Teacher | None = None, judge: Teacher | None = None,
              tokenizer: Any = None) -> SynthResult:
    """Run the whole pipeline into ``out`` (created; a rerun reuses its teacher cache). Returns the report.

    ``teacher``/``judge``/``tokenizer`` override what the config would build (e.g. an already loaded model).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    loaded = None
    if teacher is None and cfg.teacher.kind == "hf" and cfg.chunk.tokenizer == cfg.teacher.model:
        from tunelens.models import load_model

        loaded = load_model(cfg.teacher.model, dtype=cfg.teacher.dtype, seed=cfg.teacher.seed)
    tokenizer = tokenizer or (loaded[1] if loaded else load_tokenizer(cfg.chunk.tokenizer))
    counts: Counter = Counter()
    issues: list[SourceIssue] = []
    rejected: list[dict[str, Any]] = []
    pairs = build_pairs(cfg, tokenizer, issues, rejected, counts)
    own_teacher = teacher is None
    teacher = teacher or make_teacher(cfg.teacher, loaded=loaded)
    identity = teacher.identity()
    for pc in pairs:
        pc.key = request_key(pc.request, identity)
    cache_path = Path(cfg.cache_path) if cfg.cache_path else out / "teacher_cache.jsonl"
    try:
        with TeacherCache(cache_path) as cache:
            counts["cache_torn_lines"] = cache.torn_lines
            results = _complete_all(pairs, teacher, cache, max(cfg.request_batch, 1), counts)
    finally:
        if own_teacher:
            teacher.close()
    kept, flagged_rules = _filter(pairs, results, cfg, identity, rejected, counts)
    judge_stats = _judge(kept, cfg, judge, counts)
    n = _write_jsonl(out / "pairs.jsonl", kept)
    _write_jsonl(out / "rejected.jsonl", rejected)
    _write_jsonl(out / "issues.jsonl", (asdict(i) for i in issues))
    report = _report(cfg, counts, issues, rejected, n, flagged_rules, judge_stats, identity, cache_path)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / "report.json")
    return SynthResult(str(out), str(out / "pairs.jsonl"), str(out / "report.json"), report)


def _filter(pairs: list[PairCandidate], results: dict[str, TeacherResult], cfg: SynthConfig,
            identity: dict[str, Any], rejected: list[dict[str, Any]], counts: Counter
            ) -> tuple[list[dict[str, Any]], Counter]:
    kept: list[dict[str, Any]] = []
    rules: Counter = Counter()
    for pc in pairs:
        res = results[pc.key]
        base = {"source_id": pc.passage.source_id, "passage_id": pc.passage.passage_id, "key": pc.key}
        if not res.ok:
            counts["teacher_timeouts" if res.finish_reason == "timeout" else "teacher_errors"] += 1
            counts["teacher_malformed"] += "malformed response" in (res.error or "")
            rejected.append({**base, "reason": f"teacher_{res.finish_reason}", "detail": res.error,
                             "attempts": res.attempts})
            continue
        if res.finish_reason == "length":
            counts["truncated_outputs"] += 1
        drop, fired = check_response(pc.split.prompt, res.text, cfg.filters)
        counts["instruction_flagged_rules"] += bool(fired)
        rules.update(fired)
        if drop:
            counts["empty_outputs" if "empty_output" in drop else "filtered"] += 1
            for reason in drop:
                counts[f"filtered_{reason}"] += 1
            rejected.append({**base, "reason": drop[0], "reasons": drop, "instruction_rules": fired})
            continue
        kept.append(_record(pc, res, cfg, identity, fired))
    counts["checked_pairs"] = sum(1 for pc in pairs if results[pc.key].ok)
    return kept, rules


def _judge(kept: list[dict[str, Any]], cfg: SynthConfig, judge: Teacher | None, counts: Counter) -> dict[str, Any]:
    if not cfg.filters.judge:
        return {}
    own = judge is None
    judge = judge or make_teacher(cfg.judge)  # type: ignore[arg-type]
    try:
        rows = kept[: cfg.filters.judge_limit] if cfg.filters.judge_limit else kept
        texts = [f"{r['messages'][-2]['content']}\n\n{r['messages'][-1]['content']}" for r in rows]
        verdicts = judge_instruction_like(judge, texts) if texts else []
    finally:
        if own:
            judge.close()
    for r, v in zip(rows, verdicts):
        r["provenance"]["judge_instruction_like"] = v
    yes, errs = sum(v is True for v in verdicts), sum(v is None for v in verdicts)
    counts["judge_flagged"], counts["judge_unparsed"] = yes, errs
    answered = len(verdicts) - errs
    return {"judge": judge.identity(), "judged": len(verdicts), "flagged": yes, "unparsed_or_failed": errs,
            "flagged_share": yes / answered if answered else None}


def _report(cfg: SynthConfig, counts: Counter, issues: list[SourceIssue], rejected: list[dict[str, Any]], n: int,
            rules: Counter, judge_stats: dict[str, Any], identity: dict[str, Any], cache_path: Path
            ) -> dict[str, Any]:
    by_kind = Counter(i.kind for i in issues)
    checked = counts["checked_pairs"]
    return {
        "written": n,
        "teacher": identity,
        "cache": str(cache_path),
        "counts": {"documents": counts["documents"], "empty_files": by_kind["empty"],
                   "binary_files": by_kind["binary"], "unreadable": by_kind["unreadable"],
                   "malformed_records": by_kind["malformed"], "missing_text": by_kind["missing_text"],
                   **{k: counts[k] for k in (
                       "short_documents", "short_tail_pieces", "passages", "exact_duplicates", "near_duplicates",
                       "not_sampled", "short_passages", "pairs_to_complete", "cache_hits", "cache_torn_lines",
                       "requests_sent", "teacher_attempts", "teacher_errors", "teacher_malformed", "teacher_timeouts",
                       "empty_outputs", "truncated_outputs", "filtered")},
                   "filtered_by_reason": {k[len("filtered_"):]: v for k, v in sorted(counts.items())
                                          if k.startswith("filtered_")}},
        "instruction_check": {"rules_flagged": counts["instruction_flagged_rules"], "checked": checked,
                              "rules_flagged_share": counts["instruction_flagged_rules"] / checked if checked else None,
                              "by_rule": dict(rules.most_common()), "dropped": cfg.filters.drop_instruction_like,
                              **judge_stats},
        "issues": [asdict(i) for i in issues[:50]],
        "rejected_examples": rejected[:50],
    }
