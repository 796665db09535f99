"""Chat templates: which one applies to a tokenizer, the fallback for base models, and rendering to text."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from transformers import PreTrainedTokenizerBase

from tunelens.errors import TemplateError

# The documented fallback for tokenizers without a chat template (base models). Plain-text role
# headers, the tokenizer's BOS once at the start (if it has one) and its EOS closing every assistant
# turn, so a model tuned with it learns to stop.
FALLBACK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)

ROLES = ("system", "user", "assistant")


def load_template_file(path: str | Path) -> str:
    """Read a ``.jinja`` chat template file, with a clear error if it is missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise TemplateError(f"Chat template file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise TemplateError(f"Chat template file is empty: {p}")
    return text


def template_for(tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None) -> str:
    """The template to use: an explicit one, else the tokenizer's, else :data:`FALLBACK_TEMPLATE`."""
    if chat_template:
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: use "default"
        own = own.get("default") or next(iter(own.values()), None)
    return own or FALLBACK_TEMPLATE


def validate_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """Check the shape of a conversation; errors name the offending field."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise TemplateError(f"{where}: expected a non-empty list of {{role, content}} messages.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TemplateError(f"{where}[{i}]: expected an object with 'role' and 'content'.")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise TemplateError(f"{where}[{i}].role: {role!r} is not one of {ROLES}.")
        if not isinstance(content, str):
            raise TemplateError(f"{where}[{i}].content: expected a string, got {type(content).__name__}.")
        out.append({"role": role, "content": content})
    return out


def apply_template(
    messages: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    add_generation_prompt: bool = False,
) -> str:
    """Render messages to text with transformers' sandboxed Jinja environment."""
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raises TemplateError/TypeError/... and templates raise_exception()
        roles = "/".join(m["role"] for m in messages)
        raise TemplateError(f"The chat template refused the conversation ({roles}): {exc}") from exc
    if not isinstance(text, str):
        raise TemplateError(f"The chat template rendered {type(text).__name__}, expected text.")
    return text
