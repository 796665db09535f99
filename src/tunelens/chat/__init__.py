"""Render conversations to token ids with assistant-only loss masks, for any Jinja chat template."""
from tunelens.chat.render import TRAIN_ON, Rendered, Span, locate_contents, render, render_prompt
from tunelens.chat.templates import FALLBACK_TEMPLATE, apply_template, load_template_file, template_for
from tunelens.chat.visualise import highlight, to_record

__all__ = [
    "TRAIN_ON", "Rendered", "Span", "locate_contents", "render", "render_prompt", "FALLBACK_TEMPLATE",
    "apply_template", "load_template_file", "template_for", "highlight", "to_record",
]
