"""Tokenizers built in memory (CLIP's and T5's), so that synthetic pipelines need no file from
the hub.

The CLIP vocabulary has CLIP's layout: the 256 byte-level symbols, the same symbols ending a word
(``</w>``), the tokens produced by the merges, then ``<|startoftext|>`` and ``<|endoftext|>``
last (CLIP's text model finds the end of the prompt as the highest id when its config says
``eos_token_id == 2``; keeping the special tokens last keeps that legacy rule right too).
Any text tokenizes (unknown words fall back to single bytes); the merges make the words of
``VOCAB_WORDS`` single tokens, so prompts tokenize into realistic, short sequences.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerBase, T5TokenizerFast

from pytest_sdmem.building.pipelines.configs import DEFAULT_PROMPT

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
#: CLIP's context length; SD's text encoder has exactly this many position embeddings.
MODEL_MAX_LENGTH = 77

#: Words that become single tokens. Only letters: CLIP's pre-tokenizer splits digits apart.
VOCAB_WORDS: tuple[str, ...] = (
    *DEFAULT_PROMPT.split(),
    "the", "and", "in", "with", "at", "by", "painting", "portrait", "landscape", "city",
    "cat", "dog", "red", "blue", "green", "high", "quality", "detailed", "style", "night",
)  # fmt: skip


def _vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary plus left-to-right merges spelling each word.

    Words are merged left to right ("p h", "ph o", ... "phot o</w>"), which is a valid BPE
    merge list: every merge joins two tokens that are already in the vocabulary.
    """
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for word in dict.fromkeys(words):
        ((encoded, _),) = byte_level.pre_tokenize_str(word)
        parts = [*encoded[:-1], encoded[-1] + END_OF_WORD]
        left = parts[0]
        for right in parts[1:]:
            joined = left + right
            if joined not in known:
                known.add(joined)
                tokens.append(joined)
                merges.append((left, right))
            left = joined
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tokenizer(words: tuple[str, ...] = VOCAB_WORDS) -> CLIPTokenizer:
    """A deterministic CLIP tokenizer built in memory (no download, no file).

    ``model_max_length`` is 77 so that the pipeline pads and truncates prompts as SD does.
    """
    vocab, merges = _vocab_and_merges(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )


#: T5's special tokens at T5's ids (pad 0, end of sequence 1, unknown 2).
T5_SPECIALS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
#: SentencePiece's word-start marker.
T5_WORD_START = "\u2581"
#: The longest T5 prompt of the pipelines (Flux-dev's ``max_sequence_length``); T5's relative
#: position buckets have no length limit of their own.
T5_MAX_LENGTH = 512
_T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"


def build_t5_tokenizer(words: tuple[str, ...] = VOCAB_WORDS) -> T5TokenizerFast:
    """A deterministic T5 tokenizer built in memory with the ``tokenizers`` library.

    A SentencePiece-style unigram model, as T5's: the words of ``words`` are single pieces
    (``\u2581word``), any other text falls back to single characters (unknown characters to
    ``<unk>``), and every sequence ends with ``</s>``, as T5 encodes prompts for SD 3 and Flux.
    """
    pieces = [(token, 0.0) for token in T5_SPECIALS]
    pieces += [(T5_WORD_START + word, -1.0) for word in dict.fromkeys(words)]
    pieces += [(T5_WORD_START, -2.0)] + [(char, -5.0) for char in _T5_CHARACTERS]
    backend = Tokenizer(models.Unigram(pieces, unk_id=T5_SPECIALS.index("<unk>")))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=T5_WORD_START,
                                                     prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement=T5_WORD_START, prepend_scheme="always")
    eos = T5_SPECIALS.index("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )


def build_named_tokenizer(kind: str) -> PreTrainedTokenizerBase:
    """The in-memory tokenizer of a catalogue entry's kind: "clip" or "t5"."""
    builders = {"clip": build_tokenizer, "t5": build_t5_tokenizer}
    return builders[kind]()
