"""How many caption tokens map to <unk> under a vocabulary built as NCR's vocab.py builds it (nltk
tokens, words seen at least 4 times), with this package's tokenizer (nltk's NLTKWordTokenizer,
srem_kernels.train.captions) and with the plain regex it replaced.

    python -m bench.tokenizer_coverage [--captions 50000] [--file PATH]

Without --file the caption file is GENERATED here (templates in the style of Flickr30K / COCO
captions: possessives, contractions, quotes, hyphens, commas, numbers), not real data.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter
from pathlib import Path

from srem_kernels.train.captions import read_captions, tokenize

OLD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")  # the regex tokenizer before nltk (commit 03a164a)
SUBJECTS = ["a man", "a woman", "two kids", "a young girl", "an older man", "a group of people", "a dog", "the boy",
            "a black-and-white dog", "three men", "a street performer", "someone"]
VERBS = ["is riding", "rides", "plays with", "is holding", "looks at", "walks past", "jumps over", "throws", "is eating",
         "sits on", "doesn't like", "can't reach", "is n't watching"]
OBJECTS = ["a red bike", "the ball", "a man's hat", "his friend's dog", "a \"stop\" sign", "a 3-story building",
           "the kids' toys", "a hot-dog stand", "an ice-cream cone", "a u.s. flag", "the children's playground", "a skateboard"]
PLACES = ["in the park", "on the grass", "at the beach", "near a fountain", "on a busy street", "in front of a store",
          "at 5 p.m.", "during the parade", "by the lake", ""]


def generate(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}".strip()
        if rng.random() < 0.3:
            c = c.replace(" ", ", ", 1) if rng.random() < 0.5 else c + ", smiling"
        out.append(c[0].upper() + c[1:] + ("." if rng.random() < 0.7 else ""))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=50_000)
    ap.add_argument("--file", type=Path, help="a real caption file (.txt or .tsv) instead of the generated one")
    args = ap.parse_args(argv)
    caps = read_captions(args.file) if args.file else generate(args.captions)
    counts = Counter(t for c in caps for t in tokenize(c))
    vocab = {w for w, n in counts.items() if n >= 4}  # NCR's vocab.py: threshold 4
    out = {}
    for name, tok in (("nltk (new)", tokenize), ("regex (old)", lambda c: OLD.findall(c.lower()))):
        toks = [t for c in caps for t in tok(c)]
        unk = sum(t not in vocab for t in toks)
        out[name] = (unk, len(toks))
        print(f"  {name:<12} {unk:>7} of {len(toks)} tokens map to <unk> ({unk / len(toks):.2%})")
    print(f"  {'generated' if not args.file else args.file} caption file, {len(caps)} captions; vocabulary {len(vocab)} words")
    return out


if __name__ == "__main__":
    main()
