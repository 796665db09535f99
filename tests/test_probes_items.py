"""tunelens.probes.items and .haystack_data: built-in probe sets, user files, errors, haystacks."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from tunelens.errors import DataError
from tunelens.probes.items import (
    BUILTIN_SUITES,
    ConflictItem,
    builtin_path,
    load_conflicts,
    load_contextqa,
    load_memotrap,
    shared_data_dir,
    suite_kind,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not present")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def conflict(i: int = 0, **over) -> dict:
    rec = {"context": f"In this story the capital moved to Town{i}.", "question": "What is the capital?",
           "answer": f"Town{i}", "memory_answer": "Oldtown"}
    rec.update(over)
    return rec


# --------------------------------------------------------------------------- built-in sets

@needs_shared
@pytest.mark.parametrize("name,loader,count", [
    ("world_facts", load_conflicts, 313),
    ("capitals", load_conflicts, 196),
    ("memotrap", load_memotrap, 936),
    ("memotrap_proverb_ending", load_memotrap, 860),
    ("memotrap_proverb_translation", load_memotrap, 843),
    ("memotrap_hate_speech_ending", load_memotrap, 100),
    ("memotrap_history_of_science_qa", load_memotrap, 736),
    ("xquad", load_contextqa, 1190),
    ("boolq", load_contextqa, 3270),
])
def test_builtin_counts_and_ids(name, loader, count):
    items = loader(name, shared_dir=SHARED)
    assert len(items) == count
    ids = [it.id for it in items]
    assert len(set(ids)) == count and all(i.startswith(name + ":") for i in ids)
    assert all(it.source == name for it in items)
    assert loader(name, shared_dir=SHARED, limit=3) == items[:3]  # deterministic order, limit = prefix
    assert name in BUILTIN_SUITES and BUILTIN_SUITES[name]


@needs_shared
def test_world_facts_content_and_capitals_overlap():
    facts = load_conflicts("world_facts", shared_dir=SHARED)
    caps = load_conflicts("capitals", shared_dir=SHARED)
    f0 = facts[0]
    assert (f0.id, f0.answer, f0.memory_answer) == ("world_facts:0", "Herat", "Kabul")
    assert "Herat" in f0.context and f0.question == "What is the capital city of Afghanistan?"
    # README: the first 196 world facts are exactly the 196 capitals items; the other 117 are not
    key = lambda it: (it.context, it.question, it.answer, it.memory_answer)  # noqa: E731
    assert [key(it) for it in facts[:196]] == [key(it) for it in caps]
    assert not {key(it) for it in facts[196:]} & {key(it) for it in caps}
    assert len(facts) - len(caps) == 117
    assert facts[12].id == "world_facts:12" and caps[12].id == "capitals:12"


@needs_shared
def test_memotrap_classes_parsed():
    items = load_memotrap("memotrap", shared_dir=SHARED)
    first = items[0]
    assert first.prompt == 'Write a quote that ends in the word "heavy": Absence makes the heart grow'
    assert first.classes == [" heavy.", " fonder."] and first.answer_index == 0
    assert first.answer == " heavy." and first.memory_answers == [" fonder."]
    c = first.to_conflict()
    assert isinstance(c, ConflictItem) and (c.answer, c.memory_answer) == ("heavy.", "fonder.")
    assert sum(it.answer_index == 0 for it in items) == 484
    hos = load_memotrap("memotrap_history_of_science_qa", shared_dir=SHARED)
    assert hos[0].classes == [" A", " B"] and hos[0].answer_index == 1 and "\nB. The Earth is flat." in hos[0].prompt


@needs_shared
def test_contextqa_builtins():
    xq = load_contextqa("xquad", shared_dir=SHARED)
    assert xq[0].id == "xquad:56beb4343aeaaa14008c925b" and xq[0].answers == ["308"]
    assert xq[0].question == "How many points did the Panthers defense surrender?"
    assert len({it.context for it in xq}) == 240
    bq = load_contextqa("boolq", shared_dir=SHARED)
    assert [it.answers for it in bq].count(["yes"]) == 2033 and [it.answers for it in bq].count(["no"]) == 1237
    assert bq[0].id == "boolq:0" and bq[0].context.startswith("All biomass goes through")


def test_suite_kinds_and_wrong_kind():
    assert suite_kind("capitals") == "conflict" and suite_kind("boolq") == "contextqa"
    assert suite_kind("memotrap_proverb_translation") == "memotrap" and suite_kind("haystack") == "haystack"
    with pytest.raises(DataError, match="unknown built-in suite 'nope'"):
        suite_kind("nope")
    with pytest.raises(DataError, match="'boolq' is a built-in contextqa suite, not a conflict suite"):
        load_conflicts("boolq", shared_dir=SHARED)
    with pytest.raises(DataError, match=r"unknown conflict suite 'wrld_facts': not a built-in"):
        load_conflicts("wrld_facts")
    with pytest.raises(DataError, match=r"nowhere\.jsonl: file not found"):
        load_conflicts("nowhere.jsonl")


def test_shared_dir_resolution(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match=rf"shared data directory not found: {missing} \(from the shared_dir argument\)"):
        load_conflicts("world_facts", shared_dir=missing)
    monkeypatch.setenv("TUNELENS_SHARED_DATA", str(missing))
    with pytest.raises(DataError, match=rf"{missing} \(from \$TUNELENS_SHARED_DATA\)"):
        shared_data_dir()
    # a shared dir without the built-in's file: the error names the file
    (tmp_path / "conflicts").mkdir()
    monkeypatch.setenv("TUNELENS_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"world_facts\.json: file of the built-in conflict suite 'world_facts' not found"):
        load_conflicts("world_facts")
    (tmp_path / "conflicts" / "world_facts.json").write_text(json.dumps([conflict(0), conflict(1)]), encoding="utf-8")
    items = load_conflicts("world_facts")
    assert [it.id for it in items] == ["world_facts:0", "world_facts:1"]
    assert builtin_path("world_facts") == tmp_path / "conflicts" / "world_facts.json"


@needs_shared
def test_default_shared_dir_is_next_to_repo(monkeypatch):
    monkeypatch.delenv("TUNELENS_SHARED_DATA", raising=False)
    monkeypatch.chdir("/")
    assert shared_data_dir().resolve() == SHARED.resolve()


# --------------------------------------------------------------------------- user files

def test_field_mapping_jsonl_with_ids(tmp_path):
    recs = [{"uid": f"b{i}", "bio": f"She painted the Mona Lisa, says story {i}.", "q": "Who painted it?",
             "answer": f"Painter{i}", "parametric_answer": "Leonardo da Vinci"} for i in range(3)]
    path = write_jsonl(tmp_path / "bios.jsonl", recs)
    items = load_conflicts(str(path), fields={"context": "bio", "question": "q",
                                              "memory_answer": "parametric_answer", "id": "uid"})
    assert [it.id for it in items] == ["bios:b0", "bios:b1", "bios:b2"]
    assert items[1] == ConflictItem("bios:b1", recs[1]["bio"], "Who painted it?", "Painter1",
                                    "Leonardo da Vinci", str(path))
    assert json.loads(json.dumps(dataclasses.asdict(items[0])))["memory_answer"] == "Leonardo da Vinci"
    # without a mapping, parametric_answer is the fallback spelling of memory_answer ([A]'s CF_Bio)
    items2 = load_conflicts(path, fields={"context": "bio", "question": "q"}, limit=2)
    assert [it.memory_answer for it in items2] == ["Leonardo da Vinci"] * 2 and items2[0].id == "bios:0"


def test_field_mapping_csv_and_nested_json(tmp_path):
    path = tmp_path / "caps.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["passage", "question", "ctx", "real"])
        w.writerow(["Line one.\nLine two moved the capital to Herat.", "Capital?", "Herat", "Kabul"])
        w.writerow(["The capital is now Lyon.", "Capital of France?", "Lyon", "Paris"])
    items = load_conflicts(path, fields={"context": "passage", "answer": "ctx", "memory_answer": "real"})
    assert [(it.id, it.answer, it.memory_answer) for it in items] == [("caps:0", "Herat", "Kabul"),
                                                                      ("caps:1", "Lyon", "Paris")]
    assert items[0].context.endswith("to Herat.")
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"items": [{"c": {"text": "X moved to Y."}, "question": "Where?",
                                              "answer": "Y", "memory_answer": "Z"}]}), encoding="utf-8")
    got = load_conflicts(nested, fields={"context": "c.text"})
    assert got[0].context == "X moved to Y." and got[0].id == "nested:0"


def test_user_memotrap_and_contextqa(tmp_path):
    mt = write_jsonl(tmp_path / "mt.jsonl", [
        {"prompt": "p1", "classes": [" a1", " b1"], "answer_index": 1},
        {"prompt": "p2", "options": "(' x', ' y', ' z')", "gold": "2"},
    ])
    with pytest.raises(DataError, match=r"mt\.jsonl, line 2, field 'classes': missing"):
        load_memotrap(mt)
    good = write_jsonl(tmp_path / "mt2.jsonl", [{"prompt": "p2", "options": "(' x', ' y', ' z')", "gold": "2"}])
    items = load_memotrap(good, fields={"classes": "options", "answer_index": "gold"})
    assert items[0].classes == [" x", " y", " z"] and items[0].answer_index == 2
    assert items[0].memory_answers == [" x", " y"]

    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"passage": "P1", "question": "Q1", "answers": {"text": ["a", "b", "a"], "answer_start": [0, 1, 0]}},
        {"passage": "P2", "question": "Q2", "answer": True},
        {"passage": "P3", "question": "Q3", "answers": [{"text": "x"}, "y"]},
        {"passage": "P4", "question": "Q4", "answer": "z"},
    ])
    got = load_contextqa(qa, fields={"context": "passage"})
    assert [it.answers for it in got] == [["a", "b"], ["yes"], ["x", "y"], ["z"]]
    squad = tmp_path / "mini_squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
            {"id": "q2", "question": "What is in France?", "answers": [{"text": "Paris", "answer_start": 0}]},
        ]}]}]}), encoding="utf-8")
    got = load_contextqa(squad)
    assert [(it.id, it.answers) for it in got] == [("mini_squad:q1", ["France"]), ("mini_squad:q2", ["Paris"])]


# --------------------------------------------------------------------------- errors name file, line, field

def test_error_missing_field_names_file_line_field(tmp_path):
    bad = conflict(1)
    del bad["memory_answer"]
    path = write_jsonl(tmp_path / "c.jsonl", [conflict(0), bad])
    with pytest.raises(DataError) as e:
        load_conflicts(path)
    msg = str(e.value)
    assert f"{path}, line 2, field 'memory_answer': missing" in msg and "parametric_answer" in msg
    with pytest.raises(DataError, match=r"c\.jsonl, line 1, field 'mem': missing \(mapped to 'memory_answer'\)"):
        load_conflicts(path, fields={"memory_answer": "mem"})


def test_error_empty_answer_csv_physical_line(tmp_path):
    path = tmp_path / "c.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["context", "question", "answer", "memory_answer"])
        w.writerow(["two\nlines", "Q?", "A1", "M1"])  # this row spans lines 2-3
        w.writerow(["ctx", "Q?", "   ", "M2"])  # line 4
    with pytest.raises(DataError, match=rf"^{path}, line 4, field 'answer': is empty$"):
        load_conflicts(path)


def test_error_non_string_in_json_list_names_record(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([conflict(0), conflict(1, answer=42)]), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_conflicts(path)
    assert str(e.value) == f"{path}, record 1 (0-based record index), field 'answer': must be a string, got int"


def test_error_answers_that_cannot_be_scored(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [conflict(0, answer="The")])
    with pytest.raises(DataError, match=r"line 1, field 'answer': 'The' is empty after normalisation"):
        load_conflicts(path)
    path = write_jsonl(tmp_path / "d.jsonl", [conflict(0, answer="Kabul", memory_answer="kabul.")])
    with pytest.raises(DataError, match=r"d\.jsonl, line 1, field 'memory_answer': 'kabul\.' equals"):
        load_conflicts(path)


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "json"])
def test_error_non_utf8_names_line_and_field(tmp_path, suffix):
    path = tmp_path / f"bad.{suffix}"
    if suffix == "jsonl":
        good = json.dumps(conflict(0)).encode()
        bad = json.dumps(conflict(1, context="caf@")).encode().replace(b"@", b"\xe9")
        path.write_bytes(good + b"\n" + bad + b"\n")
        where = "line 2"
    elif suffix == "csv":
        path.write_bytes(b"context,question,answer,memory_answer\nok,Q,A,M\nok2,Q,A\xff,M\n")
        where = "line 3"
    else:
        text = json.dumps([conflict(0), conflict(1, context="caf@")], indent=1).encode()
        path.write_bytes(text.replace(b"@", b"\xe9"))
        line = text[: text.index(b"@")].count(b"\n") + 1
        where = f"line {line}, record 1 (0-based record index)"
    field = "answer" if suffix == "csv" else "context"
    with pytest.raises(DataError) as e:
        load_conflicts(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, {where}, field '{field}': not valid UTF-8"), msg
    assert "re-save the file as UTF-8" in msg


def test_error_memotrap_classes_and_index(tmp_path):
    path = tmp_path / "m.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "classes", "answer_index"])
        w.writerow(["p0", "[' a', ' b']", "0"])
        w.writerow(["p1\nsecond line", "[' a', ' b'", "0"])  # starts at line 3, unbalanced literal
    with pytest.raises(DataError, match=rf"^{path}, line 3, field 'classes': not a Python/JSON list literal"):
        load_memotrap(path)
    marker = tmp_path / "executed"
    evil = write_jsonl(tmp_path / "evil.jsonl", [
        {"prompt": "p", "classes": f"__import__('pathlib').Path({str(marker)!r}).touch()", "answer_index": 0}])
    with pytest.raises(DataError, match=r"evil\.jsonl, line 1, field 'classes': not a Python/JSON list literal"):
        load_memotrap(evil)
    assert not marker.exists()  # literal_eval never runs code
    cases = [
        ({"prompt": "p", "classes": "[' a', ' b']", "answer_index": 2}, "field 'answer_index': 2 is out of range"),
        ({"prompt": "p", "classes": "[' a', ' b']", "answer_index": "first"}, "field 'answer_index': must be an integer"),
        ({"prompt": "p", "classes": "[' a']", "answer_index": 0}, "field 'classes': needs at least two classes"),
        ({"prompt": "p", "classes": "[' a', 3]", "answer_index": 0}, r"field 'classes\[1\]': must be a string, got int"),
        ({"prompt": "", "classes": "[' a', ' b']", "answer_index": 0}, "field 'prompt': is empty"),
    ]
    for rec, pattern in cases:
        p = write_jsonl(tmp_path / "one.jsonl", [rec])
        with pytest.raises(DataError, match=r"one\.jsonl, line 1, " + pattern):
            load_memotrap(p)


def test_error_contextqa_answers(tmp_path):
    cases = [
        ({"context": "c", "question": "q"}, r"field 'answers': missing \(neither 'answers' nor 'answer'\)"),
        ({"context": "c", "question": "q", "answers": []}, "field 'answers': no answers"),
        ({"context": "c", "question": "q", "answers": [{"text": " "}]}, r"field 'answers\[0\]\.text': is empty"),
        ({"context": "c", "question": "q", "answers": [None]}, r"field 'answers\[0\]': must be a string, got null"),
        ({"context": "c", "question": "q", "answer": 3}, "field 'answer': must be a string, a bool or a list"),
    ]
    for rec, pattern in cases:
        p = write_jsonl(tmp_path / "qa.jsonl", [{"context": "c", "question": "q", "answer": "ok"}, rec])
        with pytest.raises(DataError, match=r"qa\.jsonl, line 2, " + pattern):
            load_contextqa(p)


def test_error_duplicate_ids_and_bad_mapping(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [conflict(0, id="x"), conflict(1, id="y"), conflict(2, id="x")])
    with pytest.raises(DataError, match=r"c\.jsonl, line 3, field 'id': duplicate id 'c:x' \(first at .*c\.jsonl, line 1\)"):
        load_conflicts(path)
    with pytest.raises(DataError, match=r"fields: unknown field name\(s\) \['answers'\]"):
        load_conflicts(path, fields={"answers": "a"})
    with pytest.raises(DataError, match=r"line 2: malformed JSON"):
        (tmp_path / "m.jsonl").write_text(json.dumps(conflict(0)) + "\n{oops\n", encoding="utf-8")
        load_conflicts(tmp_path / "m.jsonl")


# --------------------------------------------------------------------------- haystack

from tunelens.probes.haystack_data import (  # noqa: E402
    PAPER_B_KEYWORDS,
    Needle,
    build_haystack,
    haystack_grid,
    haystack_text,
    load_multi_needles,
    load_needles,
    paper_grid,
)


@pytest.fixture(scope="module")
def tok():
    from tunelens.models import tiny_tokenizer

    return tiny_tokenizer()


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False, verbose=False))


@needs_shared
def test_needles_and_haystack_text():
    (sf,) = load_needles(SHARED)
    assert sf.id == "sf_sandwich" and sf.question == "What is the best thing to do in San Francisco?"
    assert sf.text.startswith("The best thing to do in San Francisco is eat a sandwich")
    assert sf.keywords == ("sandwich", "Dolores Park", "sunny day")
    assert sf.recall_words == PAPER_B_KEYWORDS["sf_sandwich"] == ("eat", "sandwich", "sit", "dolores", "park",
                                                                  "sunny", "day")
    (pizza,) = load_multi_needles(SHARED)
    assert len(pizza.texts) == 3 and pizza.recall_words == ("figs", "prosciutto", "goat", "cheese")
    text = haystack_text(SHARED)
    assert text.startswith("July 2010What hard liquor")  # addiction.txt sorts first
    assert "Aaron Swartz created a scraped\nfeed" in text and "\r" not in text  # rss.txt
    assert text.index("Aaron Swartz created") < text.index(Path(SHARED, "haystack/essays/worked.txt")
                                                           .read_text(encoding="utf-8")[:60])
    assert haystack_text(SHARED) == text


@needs_shared
@pytest.mark.parametrize("length", [500, 3000])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_build_haystack_depth_and_length(tok, length, depth):
    needle = load_needles(SHARED)[0]
    case = build_haystack(tok, length, depth, needle, shared_dir=SHARED)
    start = case.needle_starts[0]
    assert case.context[start:start + len(needle.text)] == needle.text
    assert case.context.count(needle.text) == 1
    actual = n_tokens(tok, case.context)
    assert case.actual_tokens == actual and length - 5 <= actual <= length
    hay_tokens = actual - n_tokens(tok, needle.text)
    ratio = n_tokens(tok, case.context[:start]) / hay_tokens
    tol = 0.12 if length == 500 else 0.05  # sentence back-off moves the needle up to one sentence earlier
    assert depth - tol <= ratio <= depth + 0.01
    assert abs(case.inserted_depths[0] - ratio) < 0.02
    if 0.0 < depth < 1.0 and start > 0:  # inserted at a sentence boundary
        assert case.context[:start].rstrip().endswith(".")
    assert case.question == needle.question and case.keywords == needle.recall_words
    assert build_haystack(tok, length, depth, needle, shared_dir=SHARED) == case  # deterministic
    assert json.loads(json.dumps(case.to_dict()))["needle_id"] == "sf_sandwich"


def test_build_haystack_custom_text_and_multi(tok):
    sentences = [f"Sentence number {i} talks about topic {i % 7}." for i in range(400)]
    text = " ".join(sentences)
    needle = Needle("n", "The secret code is 4711.", "What is the secret code?", "4711", ("4711",), "test")
    case = build_haystack(tok, 1000, 0.5, needle, haystack=text)
    before = case.context[:case.needle_starts[0]]
    assert before.endswith(". ") and abs(case.inserted_depths[0] - 0.5) < 0.03
    assert case.keywords == ("4711",)
    # "e.g." and "3.5" are not sentence ends
    tricky = "A value of 3.5 e.g. here and more words follow " * 200
    c2 = build_haystack(tok, 300, 0.5, needle, haystack=tricky)
    assert c2.needle_starts == (0,)  # no sentence end before the depth: back off to the start
    from tunelens.probes.haystack_data import MultiNeedle

    multi = MultiNeedle("m", ("Alpha is first.", "Beta is second.", "Gamma is third."), "Which?",
                        ("alpha", "beta", "gamma"), "test")
    c3 = build_haystack(tok, 1500, 0.4, multi, haystack=text)
    assert list(c3.needle_starts) == sorted(c3.needle_starts)
    for got, want in zip(c3.inserted_depths, [0.4, 0.6, 0.8]):
        assert want - 0.03 <= got <= want
    with pytest.raises(ValueError, match="too small"):
        build_haystack(tok, 5, 0.5, needle, haystack=text)
    with pytest.raises(ValueError, match=r"depth must be a number in \[0, 1\]"):
        build_haystack(tok, 500, 1.5, needle, haystack=text)


def test_haystack_grids():
    grid = haystack_grid([1000, 200], [0.0, 0.5])
    assert grid == [(1000, 0.0), (1000, 0.5), (200, 0.0), (200, 0.5)]
    pg = paper_grid(2000)
    assert len(pg) == 400 and pg[0] == (200, 0.0) and pg[-1] == (2000, 1.0)
    assert sorted({n for n, _ in pg}) == [n for n, _ in pg[::20]]
    with pytest.raises(ValueError, match="repeated"):
        haystack_grid([100, 100], [0.5])
    with pytest.raises(ValueError, match=r"depths must be in \[0, 1\]"):
        haystack_grid([100], [-0.1])
