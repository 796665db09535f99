"""tunelens.data.synth without a model server: sources, cleaning, chunking, dedup, split, cache, filters, gold runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelens.config import load_config
from tunelens.data import load_examples
from tunelens.data.synth import GoldTeacher, SynthConfig, TeacherRequest, run_synth
from tunelens.data.synth.cache import TeacherCache, request_key
from tunelens.data.synth.chunk import ChunkConfig, chunk_document, load_tokenizer
from tunelens.data.synth.clean import CleanConfig, clean_text, normalize_whitespace, strip_gutenberg
from tunelens.data.synth.dedup import DedupConfig, deduplicate
from tunelens.data.synth.filters import FilterConfig, check_response, instruction_rules, repetition_ratio
from tunelens.data.synth.sources import SourceSpec, iter_documents
from tunelens.data.synth.split import SplitConfig, split_passage
from tunelens.data.synth.teachers import TeacherResult
from tunelens.errors import ConfigError

WORDS = ("the river ran past old mills and quiet farms while a heron stood in reeds near the bank watching "
         "for fish as morning light spread over fields of barley and the village woke slowly to bells").split()


def prose(seed: int, n_words: int = 120) -> str:
    """Deterministic pseudo-prose with sentences, distinct per seed."""
    import random

    rng = random.Random(seed)
    out, sent = [], []
    for _ in range(n_words):
        sent.append(rng.choice(WORDS))
        if len(sent) >= rng.randint(8, 14):
            out.append(" ".join(sent).capitalize() + ".")
            sent = []
    if sent:
        out.append(" ".join(sent).capitalize() + ".")
    return " ".join(out)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


# ---------------------------------------------------------------- cleaning
def test_strip_gutenberg_keeps_only_the_body(shared_data: Path):
    raw = (shared_data / "prose" / "gutenberg_11_alices_adventures_in_wonderland.txt").read_text(encoding="utf-8-sig")
    body, found = strip_gutenberg(raw.replace("\r\n", "\n"))
    assert found
    assert "Project Gutenberg" not in body[:2000] and "PROJECT GUTENBERG" not in body[-3000:]
    assert "Alice was beginning to get very tired" in body
    assert len(body) < len(raw) and len(body) > 0.8 * len(raw)
    assert strip_gutenberg("no markers here") == ("no markers here", False)


def test_normalize_whitespace_and_unwrap():
    text = "\ufeffFirst  line\r\nwraps here.\t \r\n\r\n\r\n\r\nSecond\u00a0para.  \n"
    assert normalize_whitespace(text) == "First line\nwraps here.\n\nSecond para."
    assert normalize_whitespace(text, unwrap_lines=True) == "First line wraps here.\n\nSecond para."
    cfg = CleanConfig(gutenberg=True, unwrap_lines=True)
    g = ("header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nbody  text\nmore\n"
         "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicense")
    assert clean_text(g, cfg) == "body text more"


# ---------------------------------------------------------------- sources
def test_sources_count_empty_binary_and_bad_records(tmp_path: Path):
    (tmp_path / "a.txt").write_text("A real document. " * 5)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait, tr\xe8s bien.".encode("latin-1"))
    jl = tmp_path / "docs.jsonl"
    jl.write_text('{"text": "one doc"}\n{"body": "no text field"}\nnot json\n{"text": "  "}\n{"text": "two"}\n')
    issues: list = []
    docs = list(iter_documents([SourceSpec(path=str(tmp_path))], issues))
    ids = [d.source_id for d in docs]
    assert ids == [str(tmp_path / "a.txt"), f"{jl}:1", f"{jl}:5", str(tmp_path / "latin1.txt")]
    assert docs[-1].text.startswith("café")
    kinds = {(Path(i.source_id.split(":")[0]).name, i.kind) for i in issues}
    assert kinds == {("empty.txt", "empty"), ("blank.txt", "empty"), ("img.bin", "binary"),
                     ("docs.jsonl", "missing_text"), ("docs.jsonl", "malformed"), ("docs.jsonl", "empty")}
    by_id = {i.source_id: i.kind for i in issues}
    assert by_id[f"{jl}:2"] == "missing_text" and by_id[f"{jl}:3"] == "malformed" and by_id[f"{jl}:4"] == "empty"
    with pytest.raises(ConfigError, match="source not found"):
        list(iter_documents([SourceSpec(path=str(tmp_path / "nope"))], []))


def test_sources_datasets_dir(tmp_path: Path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": ["doc one", "", "doc three"]})}) \
        .save_to_disk(str(tmp_path / "ds"))
    issues: list = []
    docs = list(iter_documents([SourceSpec(path=str(tmp_path / "ds"), text_field="content")], issues))
    assert [d.text for d in docs] == ["doc one", "doc three"]
    assert docs[1].source_id.endswith("ds::train:#2")
    assert [(i.kind, i.source_id.endswith(":#1")) for i in issues] == [("empty", True)]


# ---------------------------------------------------------------- chunking
def test_chunk_lengths_and_boundaries(tok):
    text = "\n\n".join(prose(i, 60) for i in range(12))
    cfg = ChunkConfig(tokenizer="tiny-llama", passage_tokens=80, min_tokens=20)
    passages, dropped = chunk_document("doc", text, tok, cfg)
    assert len(passages) >= 5
    for p in passages:
        n = len(tok(p.text, add_special_tokens=False)["input_ids"])
        assert cfg.min_tokens <= p.n_tokens <= cfg.passage_tokens
        assert abs(n - p.n_tokens) <= 2  # re-tokenizing the stripped piece may merge a boundary token
        assert text[p.char_start:].startswith(p.text)
    # cuts fall on sentence ends whenever there is one in the window
    assert sum(p.text.endswith(".") for p in passages[:-1]) >= len(passages) - 2
    # consecutive passages cover the text without overlap
    assert all(a.char_start + len(a.text) <= b.char_start for a, b in zip(passages, passages[1:]))
    short, _ = chunk_document("tiny", "Too short.", tok, cfg)
    assert short == []
    limited, _ = chunk_document("doc", text, tok, ChunkConfig(passage_tokens=80, min_tokens=20,
                                                               max_passages_per_document=2))
    assert len(limited) == 2


# ---------------------------------------------------------------- dedup
def test_dedup_finds_exact_and_near_duplicates(tok):
    from tunelens.data.synth.chunk import Passage

    base = [prose(i, 80) for i in range(6)]
    words = base[0].split()
    near = " ".join(words[:40] + ["heron"] + words[41:])  # one word changed in 80
    texts = base + [base[2].upper(), near]
    ps = [Passage(f"s{i}", 0, t, 80, 0) for i, t in enumerate(texts)]
    kept, removed = deduplicate(ps, DedupConfig(threshold=0.7))
    assert [p.source_id for p in kept] == ["s0", "s1", "s2", "s3", "s4", "s5"]
    kinds = {(d.passage_id, d.kind, d.duplicate_of) for d in removed}
    assert kinds == {("s6#p0", "exact", "s2#p0"), ("s7#p0", "near", "s0#p0")}
    assert [d.similarity for d in removed if d.kind == "near"][0] >= 0.7
    kept2, removed2 = deduplicate(ps, DedupConfig(near=False))
    assert len(kept2) == 7 and [d.kind for d in removed2] == ["exact"]


# ---------------------------------------------------------------- split
@pytest.mark.parametrize("unit", ["words", "sentences", "tokens"])
def test_split_ratio_units(unit, tok):
    text = prose(3, 200)
    sp = split_passage(text, SplitConfig(unit=unit, ratio=0.5, min_prompt=2, min_continuation=2), tok)
    assert sp is not None
    assert text.startswith(sp.prompt) and text.endswith(sp.continuation)
    assert sp.index == round(0.5 * sp.total)
    if unit == "words":
        assert len(sp.prompt.split()) == sp.index
        assert len(sp.continuation.split()) == sp.total - sp.index
    if unit == "sentences":
        assert sp.prompt.endswith(".")
    if unit == "tokens":  # never inside a word
        assert text[sp.char:sp.char + 1] in ("", " ")


def test_split_bounds_and_too_short():
    text = prose(4, 100)
    sp = split_passage(text, SplitConfig(unit="words", ratio=0.5, min_prompt=2, max_prompt=10, min_continuation=5))
    assert sp.index == 10 and len(sp.prompt.split()) == 10
    sp = split_passage(text, SplitConfig(unit="words", ratio=0.5, min_prompt=2, min_continuation=5,
                                         max_continuation=7))
    assert len(sp.continuation.split()) == 7
    assert split_passage("one two three four", SplitConfig(unit="words", min_prompt=3, min_continuation=3)) is None
    with pytest.raises(ConfigError):
        SplitConfig(unit="paragraphs").validate()


# ---------------------------------------------------------------- filters
def test_filters_length_repetition_and_instruction_rules():
    cfg = FilterConfig(min_response_words=3)
    assert check_response("p", "", cfg)[0] == ["empty_output"]
    assert check_response("p", "two words", cfg)[0] == ["too_short"]
    loop = "and then it was " * 20
    assert repetition_ratio(loop) > 0.8 and repetition_ratio(prose(1, 60)) < 0.3
    assert "repetitive" in check_response("p", loop, cfg)[0]
    assert instruction_rules("Write a poem about the sea.") == ["imperative_request"]
    assert "assistant_address" in instruction_rules("Could you please explain how tides work?")
    assert "task_header" in instruction_rules("### Instruction:\nsummarize")
    assert instruction_rules(prose(2, 80)) == []
    drop, fired = check_response("Write a poem about the sea.", prose(5, 30), FilterConfig(drop_instruction_like=True))
    assert fired == ["imperative_request"] and drop == ["instruction_like"]


# ---------------------------------------------------------------- cache
def test_cache_roundtrip_and_torn_line(tmp_path: Path):
    ident = GoldTeacher().identity()
    r1, r2 = TeacherRequest(prompt="a", reference="b"), TeacherRequest(prompt="a", reference="c")
    k1, k2 = request_key(r1, ident), request_key(r2, ident)
    assert k1 != k2 and k1 == request_key(TeacherRequest(prompt="a", reference="b"), ident)
    assert k1 != request_key(r1, {**ident, "params": {"temperature": 0.5}})
    path = tmp_path / "c.jsonl"
    with TeacherCache(path) as c:
        assert c.put(k1, TeacherResult("b", "stop"))
        assert not c.put(k2, TeacherResult("", "error", error="boom"))  # failures are not cached
    with open(path, "ab") as f:
        f.write(b'{"key": "deadbeef", "result": {"te')  # a crash mid-write
    with TeacherCache(path) as c:
        assert c.torn_lines == 1 and len(c) == 1 and c.get(k1).text == "b"
        c.put(k2, TeacherResult("c", "stop"))
    with TeacherCache(path) as c:
        assert c.torn_lines == 1 and {c.get(k1).text, c.get(k2).text} == {"b", "c"}


# ---------------------------------------------------------------- pipeline (gold)
def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(6):
        (d / f"doc{i}.txt").write_text("\n\n".join(prose(10 * i + j, 70) for j in range(3)))
    (d / "copy.txt").write_text((d / "doc1.txt").read_text())  # exact duplicate of doc1
    (d / "empty.txt").write_text("")
    (d / "binary.dat").write_bytes(bytes(range(256)) * 4)
    (d / "short.txt").write_text("Only a few words.")
    return d


def _cfg(src: Path, *extra: str) -> SynthConfig:
    return load_config(SynthConfig, None, [f"sources=[{{path: {src}}}]", "chunk.tokenizer=tiny-llama",
                                           "chunk.passage_tokens=96", "chunk.min_tokens=24", "split.min_prompt=4",
                                           "split.min_continuation=4", "teacher.kind=gold", *extra])


def test_gold_pipeline_counts_everything(tmp_path: Path):
    res = run_synth(_cfg(_corpus(tmp_path)), tmp_path / "out")
    c = res.report["counts"]
    assert c["documents"] == 8 and c["empty_files"] == 1 and c["binary_files"] == 1
    assert c["short_documents"] == 1
    assert c["exact_duplicates"] >= 3  # every passage of copy.txt
    assert c["requests_sent"] == c["pairs_to_complete"] == res.report["written"] + c["filtered"]
    rows = [json.loads(line) for line in open(res.pairs_path)]
    assert len(rows) == res.report["written"] > 10
    for r in rows:
        prov = r["provenance"]
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert prov["teacher"] == {"kind": "gold"} and prov["split"]["unit"] == "words"
        src = Path(prov["source_id"]).read_text()
        assert r["messages"][0]["content"] in src and r["messages"][1]["content"] in src
    rejected = [json.loads(line) for line in open(tmp_path / "out" / "rejected.jsonl")]
    assert {"short_document", "exact_duplicate"} <= {r["reason"] for r in rejected}
    assert any(r["source_id"].endswith("short.txt") for r in rejected)
    issues = [json.loads(line) for line in open(tmp_path / "out" / "issues.jsonl")]
    assert {(Path(i["source_id"]).name, i["kind"]) for i in issues} == {("empty.txt", "empty"),
                                                                         ("binary.dat", "binary")}
    # directly usable as SFT data
    loaded = load_examples(res.pairs_path)
    assert len(loaded) == len(rows) and not loaded.rejected
    assert loaded.examples[0].meta["provenance"]["source_id"] == rows[0]["provenance"]["source_id"]


def test_gold_rerun_uses_cache_and_sampling_is_seeded(tmp_path: Path):
    src = _corpus(tmp_path)
    first = run_synth(_cfg(src, "max_pairs=5"), tmp_path / "out")
    again = run_synth(_cfg(src, "max_pairs=5"), tmp_path / "out")
    assert first.report["counts"]["requests_sent"] == 5
    assert again.report["counts"]["requests_sent"] == 0 and again.report["counts"]["cache_hits"] == 5
    assert Path(first.pairs_path).read_text() == Path(again.pairs_path).read_text()
    other = run_synth(_cfg(src, "max_pairs=5", "seed=1"), tmp_path / "out2")
    assert Path(other.pairs_path).read_text() != Path(first.pairs_path).read_text()


class _FlakyTeacher:
    """Errors on every third request, returns empty text on every fifth: the run must count both."""

    name = "flaky"
    batch_size = 4

    def __init__(self, healthy: bool = False):
        self.calls, self.healthy = 0, healthy

    def identity(self):
        return {"kind": "flaky"}

    def complete(self, requests):
        out = []
        for r in requests:
            self.calls += 1
            if self.healthy:
                out.append(TeacherResult(r.reference or "", "stop"))
            elif self.calls % 3 == 0:
                out.append(TeacherResult("", "timeout" if self.calls % 2 else "error", error="simulated"))
            elif self.calls % 5 == 0:
                out.append(TeacherResult("", "stop"))
            else:
                out.append(TeacherResult(r.reference or "", "stop"))
        return out

    def close(self):
        pass


def test_teacher_failures_are_counted_not_fatal(tmp_path: Path):
    src = _corpus(tmp_path)
    res = run_synth(_cfg(src, "max_pairs=15"), tmp_path / "out", teacher=_FlakyTeacher())
    c = res.report["counts"]
    assert c["teacher_errors"] + c["teacher_timeouts"] == 5 and c["teacher_timeouts"] >= 1
    assert c["empty_outputs"] == 2  # calls 5 and 10
    assert res.report["written"] == 15 - 5 - 2
    rejected = [json.loads(line) for line in open(tmp_path / "out" / "rejected.jsonl")]
    reasons = [r["reason"] for r in rejected if r.get("key")]
    assert sorted(reasons).count("empty_output") == 2 and all(r.get("source_id") for r in rejected)
    # failed requests are retried on the next run; finished ones (even empty) are not
    healthy = _FlakyTeacher(healthy=True)
    res2 = run_synth(_cfg(src, "max_pairs=15"), tmp_path / "out", teacher=healthy)
    assert healthy.calls == 5 and res2.report["counts"]["cache_hits"] == 10
    assert res2.report["counts"]["empty_outputs"] == 2 and res2.report["written"] == 13


def test_cli_end_to_end_gold(tmp_path: Path, run_cli):
    src = _corpus(tmp_path)
    out = tmp_path / "run"
    r = run_cli("synth", "configs/synth-gold.yaml", "--out", out, f"sources=[{{path: {src}}}]",
                "chunk.tokenizer=tiny-llama", "chunk.passage_tokens=96", "chunk.min_tokens=24",
                "split.min_prompt=4", "split.min_continuation=4", "max_pairs=8")
    assert r.returncode == 0, r.stderr
    assert "wrote 8 pairs" in r.stdout and "binary 1" in r.stdout
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["written"] == 8
    assert load_examples(summary["pairs"]).examples[0].messages[1]["role"] == "assistant"
    assert (out / "config.yaml").is_file() and json.loads((out / "report.json").read_text())["written"] == 8


def test_config_errors_name_the_key(tmp_path: Path):
    with pytest.raises(ConfigError, match="split.unit"):
        load_config(SynthConfig, "configs/synth-gold.yaml", ["split.unit=paragraphs"])
    with pytest.raises(ConfigError, match="teacher.kind"):
        load_config(SynthConfig, "configs/synth-gold.yaml", ["teacher.kind=gpt"])
    with pytest.raises(ConfigError, match="sources is empty"):
        load_config(SynthConfig, None, [])
    with pytest.raises(ConfigError, match="judge"):
        load_config(SynthConfig, "configs/synth-gold.yaml", ["filters.judge=true"])


@pytest.mark.slow
def test_cli_synth_then_sft(tmp_path: Path, run_cli):
    """The pairs train as they are: ``tunelens synth`` (gold) then ``tunelens sft`` on its pairs.jsonl."""
    src = _corpus(tmp_path)
    r = run_cli("synth", "configs/synth-gold.yaml", "--out", tmp_path / "syn", f"sources=[{{path: {src}}}]",
                "chunk.tokenizer=tiny-llama", "chunk.passage_tokens=96", "chunk.min_tokens=24", "split.min_prompt=4",
                "split.min_continuation=4", "max_pairs=16")
    assert r.returncode == 0, r.stderr
    s = run_cli("sft", "configs/sft-tiny.yaml", "--out", tmp_path / "sft",
                f"data.paths=[{tmp_path / 'syn' / 'pairs.jsonl'}]", "max_steps=3", "save_every=0", "tensorboard=false")
    assert s.returncode == 0, s.stderr
    metrics = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 3 and all(x == x and x > 0 for x in losses)  # finite, positive
    assert (tmp_path / "sft" / "final" / "config.json").is_file()
