"""Tests for tunelens.data: schemas, loaders, validation errors, tokenize, packing, collation."""
from __future__ import annotations

import dataclasses
import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from tunelens.data import (
    Example,
    PackedRow,
    TokenizedExample,
    collate_packed,
    collate_padded,
    count_trained_tokens,
    load_examples,
    make_labels,
    pack_examples,
    tokenize_examples,
)
from tunelens.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat(user: str = "hi", answer: str = "hello") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


# --------------------------------------------------------------------------- schemas


def test_messages_schema_source_and_meta(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{**chat("a", "b"), "id": 7}, chat("c", "d")])
    rep = load_examples(p)
    assert rep.schemas == {str(p): "messages"}
    assert [e.messages for e in rep.examples] == [chat("a", "b")["messages"], chat("c", "d")["messages"]]
    assert rep.examples[0].source == f"{p}:1" and rep.examples[1].source == f"{p}:2"
    assert rep.examples[0].meta == {"id": 7}
    assert rep.n_read == 2 and rep.rejected == []


def test_sharegpt_conversations(tmp_path):
    rec = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}]}
    rep = load_examples(write_jsonl(tmp_path / "d.jsonl", [rec]))
    assert rep.examples[0].messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                        {"role": "assistant", "content": "A"}]


def test_sharegpt_unknown_speaker_names_field(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}
    p = write_jsonl(tmp_path / "d.jsonl", [rec])
    with pytest.raises(DataError, match=r"line 1, field 'conversations\[1\]\.from': unknown speaker 'robot'"):
        load_examples(p, on_error="fail")


def test_prompt_completion_strings_and_conversational(tmp_path):
    recs = [{"prompt": "2+2?", "completion": "4"},
            {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
             "completion": [{"role": "assistant", "content": "yo"}]}]
    ex = load_examples(write_jsonl(tmp_path / "d.jsonl", recs)).examples
    assert ex[0].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert [m["role"] for m in ex[1].messages] == ["system", "user", "assistant"]


def test_alpaca_input_joined_with_blank_line(tmp_path):
    recs = [{"instruction": "Translate.", "input": "Hallo", "output": "Hello"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
            {"instruction": "Say yo.", "output": "yo"}]
    ex = load_examples(write_jsonl(tmp_path / "d.jsonl", recs)).examples
    assert ex[0].messages[0] == {"role": "user", "content": "Translate.\n\nHallo"}
    assert ex[1].messages[0]["content"] == "Say hi." and ex[2].messages[0]["content"] == "Say yo."
    assert ex[0].messages[1] == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize("answer, text", [("Paris", "Paris"), (["Paris", "paris"], "Paris"),
                                          ({"text": ["Paris"], "answer_start": [3]}, "Paris"),
                                          ([{"text": "Paris", "answer_start": 3}], "Paris"),
                                          (True, "yes"), (False, "no"), (1889, "1889")])
def test_context_qa_answer_forms(tmp_path, answer, text):
    rec = {"context": "C.", "question": "Q?", "answer": answer}
    ex = load_examples(write_jsonl(tmp_path / "d.jsonl", [rec])).examples[0]
    assert ex.messages == [{"role": "user", "content": "C.\n\nQ?"}, {"role": "assistant", "content": text}]
    assert ex.meta["context"] == "C." and ex.meta["question"] == "Q?" and ex.meta["answer"] == text


def test_context_template_with_extra_record_field(tmp_path):
    rec = {"context": "C.", "question": "Q?", "answer": "A", "title": "T"}
    p = write_jsonl(tmp_path / "d.jsonl", [rec])
    ex = load_examples(p, context_template="[{title}] {context}\nQuestion: {question}").examples[0]
    assert ex.messages[0]["content"] == "[T] C.\nQuestion: Q?"
    with pytest.raises(DataError, match=r"must contain both \{context\} and \{question\}"):
        load_examples(p, context_template="{question}")


def test_field_mapping_plain_and_dotted(tmp_path):
    recs = [{"doc": {"body": "Ctx"}, "q": "Q?", "label": "A", "memory_answer": "M"}]
    p = write_jsonl(tmp_path / "d.jsonl", recs)
    ex = load_examples(p, fields={"context": "doc.body", "question": "q", "answer": "label"}).examples[0]
    assert ex.messages[0]["content"] == "Ctx\n\nQ?" and ex.messages[1]["content"] == "A"
    assert "q" not in ex.meta and "label" not in ex.meta and ex.meta["memory_answer"] == "M"
    p2 = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "I", "response": "R"}])
    assert load_examples(p2, fields={"output": "response"}).examples[0].messages[1]["content"] == "R"


def test_field_mapping_inside_messages(tmp_path):
    rec = {"dialog": [{"speaker": "user", "text": "Q"}, {"speaker": "assistant", "text": "A"}]}
    p = write_jsonl(tmp_path / "d.jsonl", [rec])
    ex = load_examples(p, fields={"messages": "dialog", "role": "speaker", "content": "text"}).examples[0]
    assert ex.messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_mapped_field_error_uses_file_name(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "I", "response": ""}])
    with pytest.raises(DataError, match=r"line 1, field 'response': is empty"):
        load_examples(p, fields={"output": "response"}, on_error="fail")


def test_unknown_canonical_field_in_mapping(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [chat()])
    with pytest.raises(DataError, match=r"unknown canonical name\(s\) \['reply'\]"):
        load_examples(p, fields={"reply": "response"})


def test_system_prompt_added_once(tmp_path):
    recs = [chat(), {"messages": [{"role": "system", "content": "own"}, *chat()["messages"]]}]
    ex = load_examples(write_jsonl(tmp_path / "d.jsonl", recs), system="SYS").examples
    assert ex[0].messages[0] == {"role": "system", "content": "SYS"} and len(ex[0].messages) == 3
    assert ex[1].messages[0]["content"] == "own" and len(ex[1].messages) == 3


def test_autodetect_failure_lists_keys_and_schemas(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "passage": "p", "answer": True}])
    with pytest.raises(DataError) as e:
        load_examples(p, on_error="skip")
    msg = str(e.value)
    assert f"{p}, line 1" in msg and "['answer', 'passage', 'question']" in msg
    for schema in ("messages", "prompt_completion", "alpaca", "context_qa"):
        assert schema in msg
    assert "Closest: context_qa (missing ['context'])" in msg and "fields=" in msg


def test_autodetect_uses_first_readable_record(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{oops\n' + json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    rep = load_examples(p)
    assert rep.schemas[str(p)] == "prompt_completion" and len(rep) == 1 and rep.rejected[0].line == 1


def test_forced_schema_and_unknown_schema(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "I", "output": "O", "messages": "junk"}])
    assert load_examples(p, schema="alpaca").examples[0].messages[1]["content"] == "O"
    with pytest.raises(ValueError, match="unknown schema 'tsv'"):
        load_examples(p, schema="tsv")


# --------------------------------------------------------------------------- validation errors

BAD_RECORDS = [
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     "messages[1].role", "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]},
     "messages[1].content", "content must be a string, got int"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     "messages[1].content", "got null"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
     "messages[1].content", "assistant content is empty"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "a"}]}, "messages[1].role", "only allowed as the first"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, "messages[0].content", "missing"),
    ({"messages": ["hi", {"role": "assistant", "content": "a"}]}, "messages[0]", "must be an object"),
    ({"messages": "hi"}, "messages", "must be a list of messages"),
    ({"messages": []}, "messages", "is empty"),
    ({"prompt": "p", "completion": ""}, "completion", "is empty"),
    ({"prompt": 3, "completion": "c"}, "prompt", "must be a string or a list of messages"),
    ({"prompt": "p", "completion": [{"role": "user", "content": "c"}]}, "completion", "no assistant turn"),
    ({"instruction": "i", "output": ""}, "output", "is empty"),
    ({"instruction": ["i"], "output": "o"}, "instruction", "must be a string, got list"),
    ({"instruction": "i", "input": 4, "output": "o"}, "input", "must be a string, got int"),
    ({"context": "c", "question": "q", "answer": []}, "answer", "answer list is empty"),
    ({"context": "c", "question": "q", "answer": ""}, "answer", "answer is empty"),
    ({"context": "c", "question": "q", "answers": {"start": 1}}, "answers", "has no 'text' key"),
    ({"context": 1, "question": "q", "answer": "a"}, "context", "must be a string"),
    ({"instruction": "i", "input": "x"}, "output", "missing (schema alpaca needs instruction, output"),
    ({"context": "c", "question": "q"}, "answer|answers", "missing (schema context_qa"),
]


@pytest.mark.parametrize("record, field, reason", BAD_RECORDS, ids=[f"{b[1]}-{b[2][:12]}" for b in BAD_RECORDS])
def test_bad_record_error_names_file_line_field(tmp_path, record, field, reason):
    # line 1 is valid for the same schema, so auto-detection picks it and line 2 is the bad one
    good = {"messages": chat()["messages"]} if ("messages" in record) else None
    if good is None:
        good = ({"prompt": "p", "completion": "c"} if "prompt" in record else
                {"instruction": "i", "output": "o"} if "instruction" in record else
                {"context": "c", "question": "q", "answer": "a"})
    p = write_jsonl(tmp_path / "d.jsonl", [good, record])
    with pytest.raises(DataError) as e:
        load_examples(p, on_error="fail")
    assert str(e.value).startswith(f"{p}, line 2, field {field!r}: ")
    assert reason in str(e.value)
    rep = load_examples(p, on_error="skip")
    assert len(rep) == 1 and len(rep.rejected) == 1
    rej = rep.rejected[0]
    assert (rej.file, rej.line, rej.field) == (str(p), 2, field) and reason in rej.reason


def test_skip_collects_and_fail_stops(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps(chat("1")), json.dumps({"messages": [{"role": "user", "content": "x"}]}), "",
             "{not json", "[1, 2]", json.dumps(chat("2"))]
    p.write_text("\n".join(lines) + "\n")
    rep = load_examples(p)
    assert [e.messages[0]["content"] for e in rep.examples] == ["1", "2"]
    assert [e.source for e in rep.examples] == [f"{p}:1", f"{p}:6"]
    assert [(r.line, r.field) for r in rep.rejected] == [(2, "messages"), (4, None), (5, None)]
    assert "malformed JSON" in rep.rejected[1].reason and "JSON list, expected an object" in rep.rejected[2].reason
    assert rep.n_read == 5
    s = rep.summary()
    assert "loaded 2 examples" in s and "rejected 3" in s and f"{p}, line 2, field 'messages'" in s
    with pytest.raises(DataError, match=rf"^{p}, line 2, field 'messages': no assistant turn"):
        load_examples(p, on_error="fail")


def test_malformed_json_line_fails_with_line_and_column(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(chat()) + "\n" + '{"messages": [}\n')
    with pytest.raises(DataError, match=rf"^{p}, line 2: malformed JSON: .*column 15"):
        load_examples(p, on_error="fail")


def test_non_utf8_jsonl_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(chat()).encode() + b"\n" + b'{"messages": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"^{p}, line 2: not valid UTF-8 \(byte 0xe9"):
        load_examples(p, on_error="fail")
    assert load_examples(p).rejected[0].line == 2


def test_non_utf8_csv_and_json_name_the_line(tmp_path):
    c = tmp_path / "d.csv"
    c.write_bytes(b"prompt,completion\np,c\np2,caf\xe9\n")
    with pytest.raises(DataError, match=rf"^{c}, line 3: not valid UTF-8"):
        load_examples(c)
    j = tmp_path / "d.json"
    j.write_bytes(b'[\n{"prompt": "p",\n "completion": "\xff"}]')
    with pytest.raises(DataError, match=rf"^{j}, line 3: not valid UTF-8"):
        load_examples(j)


@pytest.mark.parametrize("name, content, pattern", [
    ("e.jsonl", "", "file is empty"), ("e.jsonl", "\n\n  \n", "file is empty"),
    ("e.json", "", "file is empty"), ("e.csv", "", "file is empty"), ("e.json", "[]", "JSON list is empty"),
    ("e.json", '[{"a": 1},\n  {"b": }]', r"line 2, column 9: malformed JSON"),
    ("e.json", '"text"', "expected a JSON list of records"),
    ("e.json", '{"a": [], "b": []}', r"exactly one list of records; list-valued keys: \['a', 'b'\]"),
    ("e.txt", "x", r"unknown file extension '.txt'"),
    ("e.csv", 'prompt,completion\n"p,c\n', "line 2: malformed CSV"),
])
def test_file_level_errors(tmp_path, name, content, pattern):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=rf"^{p}[:,] .*{pattern}" if "line" not in pattern else rf"^{p}, {pattern}"):
        load_examples(p)


def test_missing_file_and_all_rejected(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_examples(tmp_path / "nope.jsonl")
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": ""}])
    with pytest.raises(DataError, match=r"no valid examples .* 1 records read, 1 rejected; first: .*line 1"):
        load_examples(p)


# --------------------------------------------------------------------------- formats


def test_json_list_dict_selector_and_jsonl_fallback(tmp_path):
    a = tmp_path / "list.json"
    a.write_text(json.dumps([chat("0"), {"messages": 1}, chat("2")]))
    rep = load_examples(a)
    assert [e.source for e in rep.examples] == [f"{a}:#0", f"{a}:#2"]
    assert (rep.rejected[0].line, rep.rejected[0].unit) == (1, "record")
    assert "record 1 (0-based record index)" in str(rep.rejected[0])
    with pytest.raises(DataError, match=r"record 1 \(0-based record index\), field 'messages'"):
        load_examples(a, on_error="fail")
    b = tmp_path / "dict.json"
    b.write_text(json.dumps({"version": 2, "data": [chat("x")]}))
    assert load_examples(b).examples[0].messages[0]["content"] == "x"
    c = tmp_path / "two.json"
    c.write_text(json.dumps({"train": [chat("t")], "test": [chat("v")]}))
    assert load_examples(f"{c}::test").examples[0].messages[0]["content"] == "v"
    d = tmp_path / "lines.json"
    write_jsonl(d, [chat("l1"), chat("l2")])
    assert [e.source for e in load_examples(d).examples] == [f"{d}:1", f"{d}:2"]


def test_squad_nested_json(tmp_path):
    qas = [{"id": "q1", "question": "Q1?", "answers": [{"answer_start": 0, "text": "Ctx"}]},
           {"id": "q2", "question": "Q2?", "answers": []}]
    doc = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Ctx one.", "qas": qas}]}]}
    p = tmp_path / "squad.json"
    p.write_text(json.dumps(doc))
    rep = load_examples(p)
    ex = rep.examples[0]
    assert ex.messages[1]["content"] == "Ctx" and ex.meta["id"] == "q1" and ex.meta["title"] == "T"
    assert (rep.rejected[0].line, rep.rejected[0].field) == (1, "answers")
    with pytest.raises(DataError, match=r"record 1 \(0-based record index; data\[0\]\.paragraphs\[0\]\.qas\[1\]\)"):
        load_examples(p, on_error="fail")


def test_csv_lines_count_header_and_multiline_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('instruction,input,output\n"Line1\nLine2",,o1\nI2,x,o2\nI3,only-two\nI4,,\n')
    rep = load_examples(p)
    assert rep.schemas[str(p)] == "alpaca"
    assert [e.source for e in rep.examples] == [f"{p}:2", f"{p}:4"]
    assert rep.examples[0].messages[0]["content"] == "Line1\nLine2"
    assert [(r.line, r.field) for r in rep.rejected] == [(5, None), (6, "output")]
    assert "row has 2 cells, the header has 3" in rep.rejected[0].reason


def test_tsv(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("prompt\tcompletion\nhello\tworld\n")
    assert load_examples(p).examples[0].messages[1]["content"] == "world"


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [chat("p0"), {"messages": [{"role": "user", "content": "p1"}, {"role": "assistant", "content": ""}]},
            chat("p2")]
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(recs), p, row_group_size=2)
    rep = load_examples(p)
    assert [e.messages for e in rep.examples] == [recs[0]["messages"], recs[2]["messages"]]
    assert [e.source for e in rep.examples] == [f"{p}:#0", f"{p}:#2"]
    with pytest.raises(DataError, match=r"record 1 \(0-based record index\), field 'messages\[1\]\.content'"):
        load_examples(p, on_error="fail")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_examples(bad)


def test_datasets_dir_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"instruction": f"i{k}", "input": "", "output": f"o{k}"} for k in range(3)])
    ds.save_to_disk(str(tmp_path / "single"))
    rep = load_examples(tmp_path / "single")
    assert [e.messages[1]["content"] for e in rep.examples] == ["o0", "o1", "o2"]
    assert rep.examples[1].source == f"{tmp_path / 'single'}:#1"
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([2])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_examples(tmp_path / "dd")) == 3
    assert [e.messages[1]["content"] for e in load_examples(f"{tmp_path / 'dd'}::test").examples] == ["o2"]
    assert len(load_examples(tmp_path / "dd", split="test")) == 1
    with pytest.raises(DataError, match=r"no split 'dev' in the DatasetDict \(splits: \['test', 'train'\]\)"):
        load_examples(f"{tmp_path / 'dd'}::dev")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        load_examples(tmp_path / "empty_dir")


def test_several_paths_and_limit(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat("a1"), chat("a2")])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "b1", "completion": "c"}])
    rep = load_examples([a, b])
    assert [e.messages[0]["content"] for e in rep.examples] == ["a1", "a2", "b1"]
    assert rep.schemas == {str(a): "messages", str(b): "prompt_completion"}
    assert [e.messages[0]["content"] for e in load_examples([a, b], limit=2).examples] == ["a1", "a2"]


# --------------------------------------------------------------------------- real shared data

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not present")


@needs_shared
def test_real_alpaca_demo():
    rep = load_examples(SHARED / "instructions" / "alpaca_en_demo_llamafactory.json")
    assert list(rep.schemas.values()) == ["alpaca"] and len(rep) == 999 and not rep.rejected
    raw = json.loads((SHARED / "instructions" / "alpaca_en_demo_llamafactory.json").read_text())
    with_input = [i for i, r in enumerate(raw) if r["input"].strip()]
    assert len(with_input) == 412
    i = with_input[0]
    assert rep.examples[i].messages[0]["content"] == raw[i]["instruction"] + "\n\n" + raw[i]["input"]


@needs_shared
def test_real_boolq_needs_mapping():
    path = SHARED / "contextqa" / "boolq_dev.jsonl"
    with pytest.raises(DataError, match=r"boolq_dev\.jsonl, line 1: cannot detect the schema.*'passage'"):
        load_examples(path)
    rep = load_examples(path, fields={"context": "passage"})
    assert len(rep) == 3270 and list(rep.schemas.values()) == ["context_qa"]
    answers = [e.messages[-1]["content"] for e in rep.examples]
    assert answers.count("yes") == 2033 and answers.count("no") == 1237
    assert rep.examples[0].meta["title"] == "Ethanol fuel" and "passage" not in rep.examples[0].meta


@needs_shared
def test_real_xquad_and_world_facts():
    rep = load_examples(SHARED / "contextqa" / "xquad_en_squad_v1.1_dev_subset.json")
    assert len(rep) == 1190 and list(rep.schemas.values()) == ["context_qa"]
    ex = rep.examples[0]
    assert ex.meta["answer"] == ex.messages[1]["content"] and ex.meta["context"] in ex.messages[0]["content"]
    assert len(ex.meta["id"]) == 24
    facts = load_examples(SHARED / "conflicts" / "world_facts.json")
    assert len(facts) == 313 and facts.examples[0].messages[1]["content"] == "Herat"
    assert facts.examples[0].meta["memory_answer"] == "Kabul"


# --------------------------------------------------------------------------- tokenize


@pytest.fixture
def fake_chat(monkeypatch):
    """A stand-in for tunelens.chat.render: one token per character; assistant chars trained."""

    def render(messages, tokenizer, train_on="assistant"):
        ids, mask = [], []
        asst = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for i, m in enumerate(messages):
            trained = train_on == "all" or (m["role"] == "assistant" and (train_on == "assistant" or i == asst[-1]))
            ids += [ord(c) % 60 + 2 for c in m["role"][0] + m["content"]]
            mask += [int(trained)] * (1 + len(m["content"]))
        return types.SimpleNamespace(input_ids=ids, trained_mask=mask, text="")

    monkeypatch.setitem(sys.modules, "tunelens.chat", types.SimpleNamespace(render=render))


def ex(user: str, answer: str, source: str) -> Example:
    return Example([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], source)


def test_tokenize_truncation_is_counted(fake_chat):
    exs = [ex("ab", "cd", "s0"), ex("a" * 10, "b" * 10, "s1"), ex("a" * 20, "b", "s2")]
    toks, rep = tokenize_examples(exs, None, max_length=16)
    assert [t.source for t in toks] == ["s0", "s1"] and [len(t) for t in toks] == [6, 16]
    assert (rep.n_examples, rep.n_kept, rep.n_truncated, rep.n_dropped_no_trained_tokens) == (3, 2, 2, 1)
    assert rep.truncated_sources == ["s1", "s2"] and rep.dropped_no_trained_sources == ["s2"]
    assert rep.n_tokens == 22 and rep.n_trained_tokens == 3 + 5
    json.dumps(dataclasses.asdict(rep))
    assert "truncated 2" in rep.summary()
    toks, rep = tokenize_examples(exs, None, max_length=16, truncation="drop")
    assert [t.source for t in toks] == ["s0"] and rep.dropped_too_long_sources == ["s1", "s2"]
    assert rep.n_dropped_too_long == 2 and rep.n_truncated == 0


def test_tokenize_zero_trainable_tokens_explains(fake_chat):
    with pytest.raises(DataError, match=r"no trainable tokens.*train_on.*chat template.*max_length=4"):
        tokenize_examples([ex("hello", "x", "s")], None, max_length=4)


def test_tokenize_with_real_render():
    chat_mod = pytest.importorskip("tunelens.chat")
    models = pytest.importorskip("tunelens.models")
    tok = models.tiny_tokenizer()
    exs = [ex("What is 2+2?", "4", "a"), ex("Name a colour. " * 20, "Blue.", "b"), ex("Hi", "Hello there!", "c")]
    toks, rep = tokenize_examples(exs, tok, max_length=48)
    assert rep.n_truncated == 1 and rep.truncated_sources == ["b"] and rep.dropped_no_trained_sources == ["b"]
    assert [t.source for t in toks] == ["a", "c"]
    for t, e in zip(toks, [exs[0], exs[2]]):
        r = chat_mod.render(e.messages, tok)
        assert t.input_ids == r.input_ids and t.trained_mask == r.trained_mask
        trained = tok.decode([i for i, m in zip(t.input_ids, t.trained_mask) if m])
        assert e.messages[1]["content"] in trained and e.messages[0]["content"] not in trained
    assert rep.n_trained_tokens == sum(sum(t.trained_mask[1:]) for t in toks)
    rows = pack_examples(toks, 64)
    assert count_trained_tokens(collate_packed(rows, tok.pad_token_id)) == rep.n_trained_tokens


# --------------------------------------------------------------------------- packing and collation


def tex(n: int, seed: int, source: str = "") -> TokenizedExample:
    rng = random.Random(seed)
    ids = [rng.randint(1, 63) for _ in range(n)]
    mask = [0] * (n // 2) + [1] * (n - n // 2)
    return TokenizedExample(ids, mask, source or f"ex{seed}")


def test_make_labels_never_targets_first_token():
    assert make_labels([5, 6, 7, 8], [1, 0, 1, 1]) == [-100, -100, 7, 8]
    assert make_labels([], []) == []


def test_packed_row_layout():
    exs = [tex(3, 0), tex(5, 1), tex(4, 2)]
    rows = pack_examples(exs, 12, strategy="greedy")
    assert len(rows) == 1
    row = rows[0]
    assert row.seq_lengths == [3, 5, 4] and row.sources == ["ex0", "ex1", "ex2"] and row.indices == [0, 1, 2]
    assert row.position_ids == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert row.input_ids == exs[0].input_ids + exs[1].input_ids + exs[2].input_ids
    assert row.labels == sum((make_labels(e.input_ids, e.trained_mask) for e in exs), [])
    assert [row.labels[i] for i in (0, 3, 8)] == [-100, -100, -100]


def test_bfd_fills_better_than_greedy_and_is_deterministic():
    lengths = [3, 3, 3, 5, 5, 5]
    exs = [tex(n, i) for i, n in enumerate(lengths)]
    greedy = pack_examples(exs, 8, strategy="greedy")
    bfd = pack_examples(exs, 8, strategy="bfd")
    assert [r.indices for r in greedy] == [[0, 1], [2, 3], [4], [5]]
    assert [r.indices for r in bfd] == [[3, 0], [4, 1], [5, 2]]
    assert all(len(r) == 8 for r in bfd)
    again = pack_examples(list(exs), 8, strategy="bfd")
    assert [r.input_ids for r in again] == [r.input_ids for r in bfd]


def test_bfd_best_fit_choice_and_ties():
    # rows after the first three: remaining 2 (row0), 4 (row1), 3 (row2); a 3 goes to row2 (fullest fit)
    exs = [tex(n, i) for i, n in enumerate([8, 6, 7, 3, 2, 2])]
    rows = pack_examples(exs, 10, strategy="bfd")
    assert [r.indices for r in rows] == [[0, 4], [2, 3], [1, 5]]
    big = [tex(random.Random(k).randint(1, 30), k) for k in range(300)]
    rows = pack_examples(big, 64)
    assert sorted(i for r in rows for i in r.indices) == list(range(300))
    assert all(len(r) <= 64 for r in rows)
    assert len(rows) <= len(pack_examples(big, 64, strategy="greedy"))
    total = sum(len(e) for e in big)
    assert len(rows) <= -(-total // 64) + 1


def test_greedy_first_fit_keeps_order():
    exs = [tex(n, i) for i, n in enumerate([6, 6, 2, 3, 1])]
    assert [r.indices for r in pack_examples(exs, 8, strategy="greedy")] == [[0, 2], [1, 4], [3]]


def test_pack_rejects_too_long_example():
    with pytest.raises(DataError, match=r"^long: example has 9 tokens, more than the packing max_length=8"):
        pack_examples([tex(3, 0), tex(9, 1, "long")], 8)


def test_collate_packed_padding_is_its_own_segment():
    from transformers.masking_utils import find_packed_sequence_indices

    rows = pack_examples([tex(3, 0), tex(2, 1), tex(4, 2)], 5, strategy="greedy")
    batch = collate_packed(rows, pad_id=0, pad_to=6)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch["input_ids"][0, 5].item() == 0 and batch["labels"][:, -1].tolist() == [-100, -100]
    assert find_packed_sequence_indices(batch["position_ids"]).tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]]
    assert count_trained_tokens(batch) == sum(sum(e.trained_mask[1:]) for e in [tex(3, 0), tex(2, 1), tex(4, 2)])
    with pytest.raises(ValueError, match="pad_to=3 is shorter"):
        collate_packed(rows, 0, pad_to=3)


def test_collate_padded():
    exs = [tex(3, 0), tex(5, 1)]
    b = collate_padded(exs, pad_id=9, pad_to_multiple_of=4)
    assert b["input_ids"].shape == (2, 8)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert b["input_ids"][0, 3:].tolist() == [9] * 5
    assert b["labels"][1].tolist() == make_labels(exs[1].input_ids, exs[1].trained_mask) + [-100] * 3
    assert count_trained_tokens(b) == 2 + 3


# --------------------------------------------------------------------------- packed == unpacked loss


def tiny_llama(attn: str):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    assert model.config._attn_implementation == attn
    return model.eval()


def token_losses(model, batch: dict) -> torch.Tensor:
    """Per-position loss CE(logits[:, t-1], labels[:, t]), 0 where ignored; shape (B, L-1)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # use_cache=False: with a KV cache transformers skips packed-sequence detection
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)


def per_example_losses(losses: torch.Tensor, rows: list[PackedRow], n: int) -> torch.Tensor:
    """Summed loss of each original example, from a packed batch's per-position losses."""
    out = torch.zeros(n)
    for r, row in enumerate(rows):
        start = 0
        for idx, length in zip(row.indices, row.seq_lengths):
            # targets t in [start+1, start+length) sit at loss position t-1
            out[idx] = losses[r, start:start + length - 1].sum()
            start += length
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(attn):
    rng = random.Random(1)
    exs = [tex(rng.randint(2, 24), 100 + k) for k in range(10)]
    model = tiny_llama(attn)
    rows = pack_examples(exs, 40)
    assert len(rows) < len(exs) and max(len(r.seq_lengths) for r in rows) >= 3
    with torch.no_grad():
        packed = collate_packed(rows, pad_id=0, pad_to=48)
        lp = token_losses(model, packed)
        single = torch.stack([token_losses(model, collate_padded([e], pad_id=0)).sum() for e in exs])
        padded = collate_padded(exs, pad_id=0, pad_to_multiple_of=8)
        lpad = token_losses(model, padded)
        # the same rows without position restarts: plain causal attention across examples
        leaky = dict(packed, position_ids=torch.arange(48).expand(len(rows), -1))
        ll = token_losses(model, leaky)
    assert count_trained_tokens(packed) == count_trained_tokens(padded) > 0
    # summed token loss, as the trainer computes it
    torch.testing.assert_close(lp.sum(), single.sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(lp.sum(), lpad.sum(), rtol=1e-5, atol=0)
    # and example by example, so that errors cannot cancel out in the sum
    torch.testing.assert_close(per_example_losses(lp, rows, len(exs)), single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lpad.sum(dim=1), single, rtol=1e-5, atol=1e-6)
    leaky_per_example = per_example_losses(ll, rows, len(exs))
    first = [row.indices[0] for row in rows]  # first example of a row sees nothing before it
    later = [i for row in rows for i in row.indices[1:]]
    torch.testing.assert_close(leaky_per_example[first], single[first], rtol=1e-5, atol=1e-6)
    assert ((leaky_per_example[later] - single[later]).abs() / single[later]).max() > 1e-3
