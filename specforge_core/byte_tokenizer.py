"""A byte-level tokenizer for random-weight test targets (no download).

256 byte tokens + ``<|endoftext|>`` (id 256). Built with the ``tokenizers`` library (a
byte-level BPE with no merges) so it behaves like any Hugging Face fast tokenizer.
"""

from __future__ import annotations

from functools import lru_cache

EOS = "<|endoftext|>"
VOCAB_SIZE = 257  # a target used with this tokenizer needs vocab_size >= 257


@lru_cache(maxsize=1)
def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    # order by the byte each stand-in encodes, so token id == byte value
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab = {ch: byte_of[ch] for ch in alphabet}
    vocab[EOS] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-character map (the one ByteLevel uses)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
