"""Benchmark: tokenizer coverage of N non-Latin transcriptions with an MMS-style `is_uroman` tokenizer.

Baseline: ask the tokenizer itself what it keeps, clip by clip (`prepare_for_tokenization`),
which is what a plain implementation does; transformers builds a new `uroman.Uroman()` (~2 s
of table loading) on every call. Ours: `text.tokenizer_view`, the same steps with one cached
Uroman, as `dataset.check_text` runs it. Both run in this process on the same texts, and the
results are checked to be identical before the times are compared.

    python benchmarks/dataset.py [--clips 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tts_pipeline import modeling
from tts_pipeline.text import _uroman, tokenizer_view

WORDS = ["в", "начале", "было", "слово", "и", "слово", "было", "у", "бога", "и", "слово", "было", "бог"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    args = parser.parse_args()

    from transformers import VitsTokenizer

    texts = [" ".join(WORDS[i % 5 : i % 5 + 6 + i % 4]).capitalize() + f" {i}." for i in range(args.clips)]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = {modeling.PAD_SYMBOL: 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz' ")}}
        modeling.make_tokenizer(vocab, tmp)
        tok = VitsTokenizer(
            vocab_file=str(Path(tmp) / "vocab.json"),
            pad_token="_",
            unk_token="_",
            phonemize=False,
            is_uroman=True,
        )
        start = time.perf_counter()
        baseline = [tok.prepare_for_tokenization(t)[0] for t in texts]
        t_base = time.perf_counter() - start

        _uroman.cache_clear()  # ours pays its one Uroman load inside the timing
        start = time.perf_counter()
        ours = [tokenizer_view(t, tok).kept for t in texts]
        t_ours = time.perf_counter() - start

    assert ours == baseline, "tokenizer_view disagrees with the tokenizer"
    print(
        json.dumps(
            {
                "clips": args.clips,
                "baseline_s": round(t_base, 3),
                "ours_s": round(t_ours, 3),
                "speedup": round(t_base / t_ours, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
