"""A word-level tokenizer for the testbed world, trained with the ``tokenizers`` library.

Every word and punctuation mark the testbed writes is one token (entity names included), so answers are
single tokens and a ~1M-parameter model learns fast. ChatML special tokens and template give it the same
chat format as the bundled presets; unknown words map to ``[UNK]``.
"""
from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]")
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Words of the probes' prompt formats (tunelens.probes.prompts / suites) and chat roles.
PROBE_WORDS = ("Context: Question: Answer: user assistant system Below is an instruction that describes a task. "
               "Write a response that appropriately completes the request. ### Instruction: Response: "
               "Answer the question based on the context above only.")


def train_tokenizer(texts: Iterable[str], max_length: int = 128) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``texts`` (every word seen becomes a token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator(list(texts) + [PROBE_WORDS], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token="[UNK]",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   model_max_length=max_length)
    fast.chat_template = CHAT_TEMPLATE
    return fast
