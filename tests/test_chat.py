"""chat.render: assistant-only masks are exact for every template in ../shared/data/chat_templates."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tunelens.chat import FALLBACK_TEMPLATE, load_template_file, render, render_prompt, to_record
from tunelens.errors import TemplateError
from tunelens.models import tiny_tokenizer

TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "data" / "chat_templates"

# template -> (special tokens it uses, bos, eos, end-of-turn token expected after a non-final assistant turn,
#              end-of-turn token expected after the final turn, whether tunelens must insert the final one)
FAMILIES = {
    "chatml": (["<|im_start|>", "<|im_end|>"], "<s>", "</s>", "<|im_end|>", "<|im_end|>", "none"),
    "hermes-3": (["<|im_start|>", "<|im_end|>"], "<|begin_of_text|>", "<|im_end|>", "<|im_end|>", "<|im_end|>", "none"),
    "qwen1.5-chat": (["<|im_start|>", "<|im_end|>"], None, "<|endoftext|>", "<|im_end|>", "<|im_end|>", "last"),
    "qwen2.5-instruct": (["<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|im_end|>", "<|im_end|>", "none"),
    "smollm2-instruct": (["<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|im_end|>", "none"),
    "internlm2-chat": (["<|im_start|>", "<|im_end|>"], "<s>", "</s>", "<|im_end|>", "<|im_end|>", "none"),
    "llama-2-chat": ([], "<s>", "</s>", "</s>", "</s>", "none"),
    "llama-3-instruct": (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>",
                         "<|end_of_text|>", "<|eot_id|>", "<|eot_id|>", "none"),
    "llama-3.2-instruct": (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>",
                           "<|eot_id|>", "<|eot_id|>", "<|eot_id|>", "none"),
    "mistral-instruct-v0.1": ([], "<s>", "</s>", "</s>", "</s>", "none"),
    "mistral-instruct-v0.3": (["[INST]", "[/INST]"], "<s>", "</s>", "</s>", "</s>", "none"),
    "gemma-2-it": (["<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>", "<end_of_turn>", "none"),
    "phi-3-mini-instruct": (["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>", "<|endoftext|>",
                            "<|end|>", "<|end|>", "none"),
    "phi-3.5-mini-instruct": (["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>", "<|endoftext|>",
                              "<|end|>", "<|end|>", "none"),
    "zephyr-7b-beta": ([], "<s>", "</s>", "</s>", "</s>", "none"),
    "tinyllama-1.1b-chat": ([], "<s>", "</s>", "</s>", "</s>", "none"),
    "tulu-3": ([], "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", "none"),
    "olmo-2-instruct": (["<|system|>", "<|user|>", "<|assistant|>"], "<|endoftext|>", "<|endoftext|>",
                        "<|endoftext|>", "<|endoftext|>", "none"),
    "deepseek-llm-7b-chat": ([], "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                             "<｜end▁of▁sentence｜>", "none"),
    "openchat-3.5": (["<|end_of_turn|>"], "<s>", "</s>", "<|end_of_turn|>", "<|end_of_turn|>", "none"),
    "solar-instruct": ([], "<s>", "</s>", "</s>", "</s>", "all"),
    "vicuna-v1.1": ([], "<s>", "</s>", "</s>", "</s>", "none"),
    "granite-3.1-instruct": (["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"], None, "<|end_of_text|>",
                             "<|end_of_text|>", "<|end_of_text|>", "none"),
}
NO_SYSTEM = {"gemma-2-it", "mistral-instruct-v0.1"}


@lru_cache(maxsize=1)
def _metaspace_backend() -> Tokenizer:
    """A SentencePiece-style (Metaspace, '▁' prefix) BPE, as Llama-2/Mistral tokenizers are."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    text = (TEMPLATES.parent / "prose" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", *bytes_], show_progress=False)
    tok.train_from_iterator([text[i: i + 2000] for i in range(0, len(text), 2000)], trainer=trainer)
    return tok


def family_tokenizer(name: str, kind: str):
    specials, bos, eos, *_ = FAMILIES[name]
    if kind == "bytelevel":
        tok = tiny_tokenizer()
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_metaspace_backend().to_str()))
    extra = [t for t in [*specials, bos, eos] if t]
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.bos_token, tok.eos_token = bos, eos
    tok.chat_template = load_template_file(TEMPLATES / f"{name}.jinja")
    return tok


def conversations(name: str) -> list[list[dict[str, str]]]:
    system = [] if name in NO_SYSTEM else [{"role": "system", "content": "You answer in one line."}]
    return [
        [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "Paris is the capital of France."}],
        system + [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "  And a fruit, with spaces around?  "},
            {"role": "assistant", "content": "  A ripe pear — très bien, 中文 ok 🍐\nSecond line.  "},
        ],
    ]


needs_templates = pytest.mark.skipif(not TEMPLATES.is_dir(), reason="../shared/data/chat_templates not present")


@needs_templates
def test_every_shared_template_has_a_family_entry():
    names = {p.stem for p in TEMPLATES.glob("*.jinja")}
    assert names == set(FAMILIES), names ^ set(FAMILIES)


@needs_templates
@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_trained_tokens_are_exactly_assistant_contents_and_end_markers(name, kind):
    tok = family_tokenizer(name, kind)
    _, _, _, eot_mid, eot_last, inserted = FAMILIES[name]
    for messages in conversations(name):
        r = render(messages, tok)
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        runs = r.trained_runs()
        assert len(runs) == len(assistants), (r.text, runs)
        for n, ((a, b), idx) in enumerate(zip(runs, assistants)):
            last = n == len(assistants) - 1
            covered = r.text[r.offsets[a][0]: r.offsets[b - 1][1]]
            content = messages[idx]["content"]
            eot = eot_last if last else eot_mid
            assert covered.endswith(eot), (name, covered)
            body = covered[: -len(eot)]
            # the template may trim the content and put template whitespace around it; nothing else
            assert body.strip() == content.strip(), (name, covered)
            assert content.strip() in tok.decode(r.input_ids[a:b])
            span = next(s for s in r.spans if s.message_index == idx)
            assert span.eot_appended == (inserted == "all" or (inserted == "last" and last))
        # nothing of the user or system turns is trained
        for s in r.spans:
            if s.role != "assistant":
                assert not any(r.trained_mask[s.token_start: s.token_end]), (name, s)
        # ids are what the template + tokenizer give, unless an end marker had to be inserted
        if inserted == "none":
            assert r.input_ids == tok(r.text, add_special_tokens=False)["input_ids"]
            assert r.text == tok.apply_chat_template(messages, tokenize=False)


@needs_templates
def test_train_on_last_and_all():
    tok = family_tokenizer("chatml", "bytelevel")
    messages = conversations("chatml")[1]
    last = render(messages, tok, train_on="last")
    assert len(last.trained_runs()) == 1
    assert "Blue." not in tok.decode([i for i, m in zip(last.input_ids, last.trained_mask) if m])
    every = render(messages, tok, train_on="all")
    assert all(every.trained_mask)


def test_fallback_template_for_base_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = None
    r = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tok)
    assert r.text.startswith(tok.bos_token + "### User:\nHi")
    rec = to_record(r, tok)
    assert rec["trained_text"] == ["Hello" + tok.eos_token]
    p = render_prompt([{"role": "user", "content": "Hi"}], tok)
    assert p.text.endswith("### Assistant:\n") and not any(p.trained_mask)
    assert FALLBACK_TEMPLATE.count("eos_token") == 1


def test_token_roles_label_user_system_and_template():
    tok = tiny_tokenizer()
    msgs = [{"role": "system", "content": "S sys"}, {"role": "user", "content": "the user text"}]
    p = render_prompt(msgs, tok)
    roles = p.token_roles(tok.bos_token_id)
    user_tokens = [t for t, r in zip(p.input_ids, roles) if r == "user"]
    assert tok.decode(user_tokens) == "the user text"
    assert roles[-1] == "template" and "assistant" not in roles


@pytest.mark.parametrize("bad, field", [
    ([], "messages"),
    ([{"role": "bot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
])
def test_bad_messages_name_the_field(bad, field):
    with pytest.raises(TemplateError, match=field.replace("[", r"\[").replace("]", r"\]")):
        render(bad, tiny_tokenizer())


@needs_templates
def test_template_exception_is_a_clear_error():
    tok = family_tokenizer("gemma-2-it", "bytelevel")
    with pytest.raises(TemplateError, match="refused the conversation"):
        render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}], tok)


def test_template_that_drops_assistant_is_refused():
    tok = tiny_tokenizer()
    drop = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(TemplateError, match="does not appear"):
        render([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], tok, chat_template=drop)


def test_pad_token_doubling_as_eos_still_closes_the_turn():
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token  # the fallback load_model applies to tokenizers without a pad token
    r = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], tok)
    assert r.text == tok.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello."}], tokenize=False)
    assert to_record(r, tok)["trained_text"] == ["Hello.<|im_end|>"]
