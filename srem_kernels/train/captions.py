"""Caption files and their tokens, read as the noisy-correspondence codebases read them.

- `{split}_caps.txt`: one caption a line, stripped (NCR's and RCL's `line.strip()`).
- `{split}_caps.tsv`: `image_id<TAB>caption` a line, read with `csv.reader(f, delimiter="\\t")`
  and the caption taken from field 1, stripped, as NCR's and RCL's CC152K loaders and NCR's
  vocab.py do (so csv's quoting applies as it does there; a further field is ignored as there).
- Tokens: nltk's `NLTKWordTokenizer` on the lower-cased caption, which is what
  `nltk.word_tokenize` applies to each sentence (NCR, RCL and the vocabularies they ship). The
  sentence split before it (Punkt) needs nltk's downloaded data and is left out: only a caption
  of several sentences differs, an inner sentence's period staying on its last word
  ("play." where word_tokenize gives "play", ".").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from srem_kernels.train.data import DataError

SPECIAL = ("<pad>", "<start>", "<end>", "<unk>")
_tokenizer = None


def _nltk_tokenizer():
    global _tokenizer
    if _tokenizer is None:
        try:
            from nltk.tokenize import NLTKWordTokenizer
        except ImportError:
            raise DataError("the precomputed datasets tokenise with nltk, which is not installed: "
                            "pip install 'srem-kernels[train]' (or pip install nltk)") from None
        _tokenizer = NLTKWordTokenizer()
    return _tokenizer


def tokenize(caption: str) -> list[str]:
    """The tokens of `caption` as NCR/RCL map them to vocabulary ids (see the module docstring)."""
    return _nltk_tokenizer().tokenize(caption.lower())


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({err.reason})") from None


def _captions(path: Path, rows: list[tuple[int, str | None]], expected: str) -> list[str]:
    """Rows (line number, caption, None for a blank line) to captions: blank lines at the end are
    no captions (a file's last newline), an empty caption anywhere else is an error."""
    while rows and rows[-1][1] is None:
        rows.pop()
    for n, caption in rows:
        if not caption:
            raise DataError(f"{path}, line {n}: empty caption ({expected} expected)")
    return [c for _, c in rows]


def read_txt(path: Path) -> list[str]:
    # split on "\n" only, as iterating over the file does (str.splitlines also splits on \x0b, \u2028, ...)
    rows = [(n, line.strip() or None) for n, line in enumerate(_text(path).split("\n"), 1)]
    return _captions(path, rows, "one caption a line")


def read_tsv(path: Path) -> list[str]:
    reader = csv.reader(_text(path).split("\n"), delimiter="\t")
    rows = []
    for fields in reader:
        if not "".join(fields).strip():
            rows.append((reader.line_num, None))
        elif len(fields) < 2:
            raise DataError(f"{path}, line {reader.line_num}: no tab; expected image_id<TAB>caption")
        else:
            rows.append((reader.line_num, fields[1].strip()))
    return _captions(path, rows, "image_id<TAB>caption")


def read_captions(path: Path) -> list[str]:
    """The captions of a `.txt` or `.tsv` caption file, in file order."""
    return read_tsv(path) if path.suffix == ".tsv" else read_txt(path)


def load_vocab(path: Path) -> dict[str, int]:
    """word2idx of a vocabulary JSON as NCR's vocab.py writes it ({"word2idx": ..., "idx2word": ..., "idx": n})."""
    try:
        word2idx = json.loads(_text(path))["word2idx"]
        if not isinstance(word2idx, dict) or not all(isinstance(i, int) for i in word2idx.values()):
            raise TypeError("word2idx must map words to integer ids")
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a vocabulary JSON with a 'word2idx' mapping ({err})") from None
    for tok in SPECIAL:
        if tok not in word2idx:
            raise DataError(f"{path}: the vocabulary lacks {tok!r}")
    if word2idx["<pad>"] != 0:
        raise DataError(f"{path}: '<pad>' must have index 0, has {word2idx['<pad>']}")
    return word2idx


def encode(captions: list[str], word2idx: dict[str, int]) -> tuple[list[torch.Tensor], int, int]:
    """Token ids <start> w1 .. wn <end> of each caption, and (tokens, tokens mapped to <unk>) over all."""
    start, end, unk = word2idx["<start>"], word2idx["<end>"], word2idx["<unk>"]
    out, n_tok, n_unk = [], 0, 0
    for caption in captions:
        ids = [word2idx.get(w, unk) for w in tokenize(caption)]
        n_tok += len(ids)
        n_unk += ids.count(unk)
        out.append(torch.tensor([start, *ids, end], dtype=torch.long))
    return out, n_tok, n_unk
