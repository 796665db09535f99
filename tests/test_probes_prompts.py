"""probes.prompts: exact variant formats, token roles, context spans and the context truncation policy."""
from __future__ import annotations

import pytest
from tokenizers import processors

from tunelens.chat import FALLBACK_TEMPLATE, render_prompt
from tunelens.errors import ConfigError
from tunelens.models import tiny_tokenizer
from tunelens.probes.prompts import (ALPACA_PREAMBLE, CONTEXT_ONLY_INSTRUCTION, VARIANTS, adds_bos, build_prompt,
                                     truncate_prompt)

CTX = "Paris is the capital of Italy."
PARTS = [("other", "Background: "), ("context", CTX), ("other", "\nQuestion: "), ("question", "What is the capital?")]
USER = "Background: " + CTX + "\nQuestion: What is the capital?"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    """The tiny tokenizer made to prepend its BOS (<|endoftext|>) like Llama-2's does."""
    t = tiny_tokenizer()
    t._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", t.bos_token_id)])
    return t


def _decode_role(tok, p, role):
    return tok.decode([i for i, r in zip(p.input_ids, p.token_roles) if r == role])


def test_exact_formats(tok):
    assert build_prompt("raw", PARTS, tok).text == USER + "\n"
    assert build_prompt("raw", "line\n", tok).text == "line\n"  # no second newline
    assert build_prompt("raw", "q", tok, system="S", response_prefix="A:").text == "S\n\nq\nA:"
    assert build_prompt("alpaca", PARTS, tok).text == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{USER}\n\n### Response:\n")
    assert build_prompt("alpaca", "q", tok, system="S").text == "S\n\n### Instruction:\nq\n\n### Response:\n"
    assert build_prompt("tulu", PARTS, tok).text == f"<|user|>\n{USER}\n<|assistant|>\n"
    assert build_prompt("tulu", "q", tok, system="S").text == "<|system|>\nS\n<|user|>\nq\n<|assistant|>\n"
    chat = build_prompt("chat", PARTS, tok, response_prefix="The")
    assert chat.text == f"<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\nThe"


@pytest.mark.parametrize("variant", VARIANTS)
def test_ids_roles_and_context_span(tok, variant):
    p = build_prompt(variant, PARTS, tok, system="Be brief.", context_only_instruction=True, indicator="[IND]",
                     response_prefix="The capital is")
    assert p.variant == variant
    assert p.input_ids == tok(p.text, add_special_tokens=False).input_ids
    assert len(p.token_roles) == len(p.input_ids)
    assert set(p.token_roles) <= {"bos", "system", "user", "template", "prefix"}
    assert _decode_role(tok, p, "user") == USER + "\n" + CONTEXT_ONLY_INSTRUCTION + " [IND]"
    assert _decode_role(tok, p, "system") == "Be brief."
    assert _decode_role(tok, p, "prefix") == "The capital is"
    assert p.token_roles[-3:] == ["prefix"] * 3
    a, b = p.context_token_span
    assert tok.decode(p.input_ids[a:b]).strip() == CTX
    assert all(r == "user" for r in p.token_roles[a:b])
    assert p.truncated == 0


def test_indicator_ends_user_turn(tok):
    p = build_prompt("tulu", "q", tok, indicator="[IND]", context_only_instruction=True)
    assert p.text == f"<|user|>\nq\n{CONTEXT_ONLY_INSTRUCTION} [IND]\n<|assistant|>\n"


def test_chat_reuses_render_prompt(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": USER}]
    r = render_prompt(msgs, tok)
    p = build_prompt("chat", PARTS, tok, system="Be brief.")
    assert p.input_ids == r.input_ids
    assert p.token_roles == r.token_roles(tok.bos_token_id)


def test_chat_fallback_template_and_stripping_template():
    base = tiny_tokenizer()
    base.chat_template = None
    p = build_prompt("chat", PARTS, base)
    r = render_prompt([{"role": "user", "content": USER}], base, chat_template=FALLBACK_TEMPLATE)
    assert p.text == r.text and p.text.endswith("### Assistant:\n")
    assert p.input_ids == r.input_ids and p.token_roles == r.token_roles(base.bos_token_id)
    assert p.token_roles[0] == "bos"  # the fallback template writes the BOS itself
    strip = tiny_tokenizer()  # a template that trims the content: the context span must still be found
    strip.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                           "{% endfor %}<|im_start|>assistant\n")
    p = build_prompt("chat", [("context", "  " + CTX), ("question", " Why?  ")], strip)
    a, b = p.context_token_span
    assert strip.decode(p.input_ids[a:b]) == CTX
    assert _decode_role(strip, p, "user") == CTX + " Why?"


def test_bos_only_when_tokenizer_adds_one(tok, bos_tok):
    assert not adds_bos(tok) and adds_bos(bos_tok)
    assert "bos" not in build_prompt("raw", "hi", tok).token_roles
    for variant in ("raw", "alpaca", "tulu"):
        p = build_prompt(variant, "hi", bos_tok)
        assert p.text.startswith("<|endoftext|>") and p.input_ids[0] == bos_tok.bos_token_id
        assert p.token_roles[0] == "bos" and p.token_roles.count("bos") == 1
        assert p.input_ids == bos_tok(p.text, add_special_tokens=False).input_ids


def test_errors(tok):
    with pytest.raises(ConfigError, match="raw, chat, alpaca, tulu"):
        build_prompt("vicuna", "q", tok)
    with pytest.raises(ConfigError, match="kind"):
        build_prompt("raw", [("passage", "x")], tok)
    with pytest.raises(ConfigError, match="adjacent"):
        build_prompt("raw", [("context", "a"), ("question", "b"), ("context", "c")], tok)
    assert build_prompt("raw", "no context", tok).context_token_span is None


def _long_parts():
    context = " ".join(f"Sentence number {i} is here." for i in range(60))
    return context, [("other", "Document: "), ("context", context), ("other", "\nQuestion: "),
                     ("question", "Which sentence mentions the needle?")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("where", ["middle", "start"])
def test_truncation_cuts_only_the_context(tok, variant, where):
    context, parts = _long_parts()
    full = build_prompt(variant, parts, tok, indicator="[IND]", response_prefix="It is")
    limit = len(full) - 100
    p = truncate_prompt(variant, parts, tok, limit, where=where, indicator="[IND]", response_prefix="It is")
    assert len(p) <= limit and 100 <= p.truncated <= 105  # reported, and not much more than needed
    kept_ctx = tok.decode(p.input_ids[slice(*p.context_token_span)])
    # everything around the context is intact
    assert p.text.startswith(full.text[: full.text.index("Document: ") + len("Document: ")])
    assert p.text.endswith(full.text[full.text.index("\nQuestion: "):])
    assert context.endswith(kept_ctx.strip()[-20:])
    if where == "middle":
        assert kept_ctx.lstrip().startswith("Sentence number 0 is here.")
        assert "number 30 " not in kept_ctx
    else:
        assert "number 0 " not in kept_ctx and kept_ctx.rstrip().endswith("Sentence number 59 is here.")


def test_truncation_noop_and_errors(tok):
    context, parts = _long_parts()
    full = build_prompt("chat", parts, tok)
    same = truncate_prompt("chat", parts, tok, len(full))
    assert same.input_ids == full.input_ids and same.truncated == 0
    with pytest.raises(ConfigError, match="Even without its context"):
        truncate_prompt("chat", parts, tok, 10)
    with pytest.raises(ConfigError, match="no context"):
        truncate_prompt("raw", context, tok, 50)
    with pytest.raises(ConfigError, match="middle"):
        truncate_prompt("raw", parts, tok, 50, where="end")
