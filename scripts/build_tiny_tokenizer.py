"""Build the byte-level BPE tokenizer bundled with the tiny presets (src/tunelens/models/assets/tiny-bpe-8k).

Trained once, deterministically, on the public-domain prose and the instruction data in ../shared/data,
so the tiny random presets have a real tokenizer with a ChatML template and no download. Re-run only
to change the asset:  python scripts/build_tiny_tokenizer.py ../shared/data
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus(shared: Path):
    for p in sorted((shared / "prose").glob("*.txt")):
        text = p.read_text(encoding="utf-8", errors="replace")
        for i in range(0, len(text), 4096):
            yield text[i : i + 4096]
    for p in sorted((shared / "instructions").glob("*.json*")):
        yield p.read_text(encoding="utf-8", errors="replace")


def main(shared: Path, out: Path, vocab_size: int = 8192) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(shared), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML
    fast.model_max_length = 2048
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    print(json.dumps({"vocab": len(fast), "out": str(out)}))


if __name__ == "__main__":
    shared_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    main(shared_dir, Path(__file__).resolve().parents[1] / "src/tunelens/models/assets/tiny-bpe-8k")
