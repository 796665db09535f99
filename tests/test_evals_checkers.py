"""IFEval checkers: every instruction id of the shared data, on hand-written responses that must pass / fail."""
from __future__ import annotations

import json

import pytest

from tunelens.errors import ConfigError, DataError
from tunelens.evals.ifeval_checkers import CHECKERS, check
from tunelens.evals.ifeval_checkers.text_util import count_sentences, count_words, split_sentences

EN = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence."

# instruction id -> (kwargs, responses that follow it, responses that do not)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "keywords:existence": ({"keywords": ["banana", "Paris"]},
                           ["I ate a BANANA in paris.", "Paris: banana bread."],
                           ["I ate a banana in Rome.", "Paris only.", ""]),
    "keywords:frequency": ({"keyword": "data", "frequency": 3, "relation": "at least"},
                           ["Data, data and more DATA.", "data data data data"],
                           ["data data", "no such word"]),
    "keywords:forbidden_words": ({"forbidden_words": ["cat", "dog"]},
                                 ["A category of hotdogs.", "Birds sing."],
                                 ["My Cat sleeps.", "the dog, barked", "DOG"]),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 3, "let_relation": "less than"},
                                  ["Zebra pie.", "no letter of that kind"],
                                  ["Zz zoo", "Pizza puzzle"]),
    "language:response_language": ({"language": "de"},
                                   ["Heute ist ein schöner Tag, und wir gehen zusammen in den Park spazieren."],
                                   [EN, "Aujourd'hui il fait beau et nous allons nous promener dans le parc."]),
    "length_constraints:number_sentences": ({"num_sentences": 3, "relation": "less than"},
                                            ["One. Two.", "Dr. Smith arrived at 3.5 p.m. today."],
                                            ["One. Two. Three.", "A? B! C. D."]),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2},
                                             ["First part.\n***\nSecond part.", "***\nA\n***\nB\n***"],
                                             ["One paragraph only.", "A\n***\n***\nB", "A\n***\nB\n***\nC"]),
    "length_constraints:number_words": ({"num_words": 5, "relation": "at least"},
                                        ["one two three four five", "It's a well-known fact."],
                                        ["one two three four", ""]),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "however"},
        ["Intro.\n\nHowever, this.\n\nEnd.", "A\n\n\"However\" we go.\n\nC"],
        ["Intro.\n\nBut however.\n\nEnd.", "Intro.\n\nHowever.", "A\n\nHowever\n\nC\n\nD"]),
    "detectable_content:number_placeholders": ({"num_placeholders": 2},
                                               ["Dear [name], at [address].", "[a][b][c]"],
                                               ["Dear [name].", "no placeholders"]),
    "detectable_content:postscript": ({"postscript_marker": "P.S."},
                                      ["Hello.\nP.S. See you.", "Hi\np. s. later"],
                                      ["Hello, no postscript.", "PS see you"]),
    "detectable_format:constrained_response": ({}, ["My answer is yes.", "Well... My answer is maybe."],
                                               ["Yes.", "my answer is yes."]),
    "detectable_format:json_format": ({}, ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', " [1, 2] "],
                                      ["{a: 1}", "Here is JSON: {\"a\": 1}"]),
    "detectable_format:multiple_sections": ({"section_spliter": "SECTION", "num_sections": 2},
                                            ["SECTION 1\nintro\nSECTION 2\nbody", "SECTION 1 a SECTION 2 b SECTION 3"],
                                            ["SECTION 1 only", "Section one, section two"]),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2},
                                              ["* one\n* two", "Intro\n- a\n- b\nEnd"],
                                              ["* one", "* a\n* b\n- c", "**bold** line\n* one"]),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2},
                                                      ["*one* and *two*", "**bold** then *it*"],
                                                      ["*one* only", "** ** and *  *", "no highlights"]),
    "detectable_format:title": ({}, ["<<My Title>>\nText", "Intro <<T>>"], ["<< >>", "<My Title>", "no title"]),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "at least"},
                                           ["The USA and NASA.", "WOW, BIG news"],
                                           ["Only ONE here.", "nothing"]),
    "change_case:english_capital": ({}, ["THIS IS A SHORT SENTENCE WRITTEN ENTIRELY IN CAPITAL LETTERS."],
                                    [EN, "HEUTE IST EIN SCHÖNER TAG UND WIR GEHEN ZUSAMMEN IN DEN PARK."]),
    "change_case:english_lowercase": ({}, ["this is a short sentence written entirely in small letters."],
                                      [EN, "heute ist ein schöner tag und wir gehen zusammen in den park."]),
    "punctuation:no_comma": ({}, ["No commas here.", "Just words"], ["One, two.", "a,b"]),
    "startend:end_checker": ({"end_phrase": "Is there anything else?"},
                             ["Done. Is there anything else?", "\"Done. is there anything else?\"  "],
                             ["Is there anything else? Done.", "Done."]),
    "startend:quotation": ({}, ['"Wrapped."', '  "a" and "b"  '], ['"Unclosed', "No quotes", '"']),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Write a poem."},
                                  ["Write a poem. Roses are red.", "write a POEM.\nOk"],
                                  ["Sure! Write a poem.", "Write a story."]),
    "combination:two_responses": ({}, ["First answer.\n******\nSecond answer.", "A ****** B"],
                                  ["Only one.", "Same\n******\nSame", "A\n******\n******\nB"]),
}


def test_cases_cover_every_id_in_the_data(shared_data):
    ids = {iid for line in (shared_data / "instructions" / "ifeval_input_data.jsonl").open()
           for iid in json.loads(line)["instruction_id_list"]}
    assert ids == set(CASES) == set(CHECKERS)
    assert len(ids) == 25


@pytest.mark.parametrize("iid", sorted(CASES))
def test_checker_positive_and_negative(iid):
    kwargs, good, bad = CASES[iid]
    for response in good:
        assert check(iid, response, kwargs), f"{iid} should pass: {response!r}"
    for response in bad:
        assert not check(iid, response, kwargs), f"{iid} should fail: {response!r}"


def test_relations_are_strict_below_and_inclusive_at_least():
    assert check("length_constraints:number_words", "a b c", {"num_words": 3, "relation": "at least"})
    assert not check("length_constraints:number_words", "a b c", {"num_words": 3, "relation": "less than"})
    assert check("length_constraints:number_words", "a b", {"num_words": 3, "relation": "less than"})
    assert check("keywords:frequency", "x x", {"keyword": "x", "frequency": 3, "relation": "less than"})


def test_unknown_id_and_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="Unknown IFEval instruction id 'keywords:nonexistent'.*known ids"):
        check("keywords:nonexistent", "text", {})
    with pytest.raises(DataError, match="missing arguments \\['num_words'\\]"):
        check("length_constraints:number_words", "text", {"relation": "at least"})
    with pytest.raises(DataError, match="unknown arguments \\['colour'\\]"):
        check("punctuation:no_comma", "text", {"colour": "red"})
    with pytest.raises(DataError, match="relation must be one of"):
        check("length_constraints:number_words", "text", {"num_words": 3, "relation": "more than"})
    # IFEval's files pad kwargs with nulls: those are ignored
    assert check("punctuation:no_comma", "text", {"num_words": None})


def test_text_utilities():
    assert count_words("It's a well-known fact, isn't it?") == 9
    assert split_sentences("Mr. Smith went to Washington. He saw the U.S. Capitol! Did he? Yes...") == [
        "Mr. Smith went to Washington.", "He saw the U.S. Capitol!", "Did he?", "Yes..."]
    assert count_sentences("Pi is 3.14 roughly. Visit example.com today.") == 2
    assert count_sentences("") == 0
