"""The example's text and tokenizer: Python's own standard library, tokenized by a
byte-level BPE trained here with the ``tokenizers`` package (nothing is downloaded).

The corpus is deterministic for a given Python: the standard library's ``.py`` files in
sorted order, every tenth one held out for evaluation, read until the training part
reaches a fixed number of bytes. The tokenizer is trained on the training part only and
cached as JSON under a name that records everything it depends on.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys
import sysconfig
from typing import NamedTuple

END_OF_TEXT = "<|endoftext|>"  # between files, so that no window reads across two unseen
HELD_OUT_EVERY = 10


class Corpus(NamedTuple):
    train: list  # the files' texts
    held_out: list
    train_bytes: int
    files: int  # read in all, both parts


def _library_files() -> list:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    # site-packages is whatever this machine installed, not Python's own text
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def standard_library_text(train_bytes: int) -> Corpus:
    """The first files of the sorted standard library whose training part holds at least
    ``train_bytes`` bytes of UTF-8 (a file is never cut)."""
    train, held_out, size, files = [], [], 0, 0
    for index, path in enumerate(_library_files()):
        if size >= train_bytes:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        files += 1
        if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
            held_out.append(text)
        else:
            train.append(text)
            size += len(text.encode("utf-8"))
    if size < train_bytes:
        raise ValueError(f"the standard library under {sysconfig.get_paths()['stdlib']} has "
                         f"only {size} bytes of .py text; ask for fewer (--corpus-bytes)")
    return Corpus(train, held_out, size, files)


def _cache_file(cache: pathlib.Path, corpus: Corpus, vocab_size: int) -> pathlib.Path:
    digest = hashlib.sha256("\0".join(corpus.train).encode("utf-8")).hexdigest()[:16]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache / f"bpe-{vocab_size}-{python}-{corpus.train_bytes}-{digest}.json"


def _train_tokenizer(texts: list, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[END_OF_TEXT], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def bpe_tokenizer(corpus: Corpus, vocab_size: int, cache: pathlib.Path):
    """A byte-level BPE of ``vocab_size`` tokens trained on ``corpus.train``, from the
    cache when it was trained before on the same text."""
    from tokenizers import Tokenizer

    path = _cache_file(cache, corpus, vocab_size)
    if path.exists():
        return Tokenizer.from_file(str(path))
    tokenizer = _train_tokenizer(corpus.train, vocab_size)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"the BPE stopped at {tokenizer.get_vocab_size()} tokens, fewer than "
                         f"the {vocab_size} asked for: give it more text (--corpus-bytes)")
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer


def token_stream(tokenizer, texts: list):
    """The texts' tokens end to end, ``END_OF_TEXT`` after each, as one int64 tensor."""
    import torch

    end = tokenizer.token_to_id(END_OF_TEXT)
    ids: list = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(end)
    return torch.tensor(ids, dtype=torch.int64)
