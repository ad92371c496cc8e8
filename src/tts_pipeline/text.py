"""Text normalisation and tokenizer coverage, shared by the dataset stage and synthesize.

Why one module: the model only ever hears text as `normalize_text` left it, so synthesis must
normalise verses with exactly the function (and the `dataset` settings) that training used.

`VitsTokenizer` silently drops every character that is not in its vocabulary; `coverage`
reproduces its preparation steps so the dataset stage can report those characters (with
counts and examples) instead of letting a model train on text with holes in it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import VitsTokenizer

    from .config import DatasetSection

_WHITESPACE = re.compile(r"\s+")
_NON_ASCII = re.compile(r"[^\x00-\x7F]")


@functools.lru_cache(maxsize=1)
def _uroman() -> Any:
    """One Uroman instance per process: building it reads its tables (~2 s)."""
    try:
        import uroman as ur
    except ImportError as exc:  # pragma: no cover - uroman is a dependency
        raise PipelineError("oov_policy 'uroman' needs the uroman package: pip install uroman") from exc
    return ur.Uroman()


def romanize(text: str) -> str:
    """Romanise with uroman (as MMS `is_uroman` tokenizers do); ASCII text is returned as is."""
    if not _NON_ASCII.search(text):
        return text
    return str(_uroman().romanize_string(text))


@functools.lru_cache(maxsize=32)
def _replacer(items: tuple[tuple[str, str], ...]) -> re.Pattern[str] | None:
    keys = sorted((k for k, _ in items if k), key=lambda k: (-len(k), k))
    return re.compile("|".join(map(re.escape, keys))) if keys else None


def apply_map(text: str, mapping: dict[str, str], form: str = "none") -> str:
    """Replace every key of `mapping` in one pass (longest key first; results are not re-mapped).

    Keys are brought to the same Unicode form as the text, so a key typed as NFD still matches.
    """
    if not mapping:
        return text
    items = tuple(sorted((_unicode(k, form), v) for k, v in mapping.items()))
    pattern = _replacer(items)
    if pattern is None:
        return text
    table = dict(items)
    return pattern.sub(lambda m: table[m.group(0)], text)


def _unicode(text: str, form: str) -> str:
    return text if form == "none" else unicodedata.normalize(form, text)  # type: ignore[arg-type]


def normalize_text(text: str, cfg: DatasetSection) -> str:
    """The text the model is trained on (and must be given at synthesis), from a transcription.

    Steps, in order: Unicode normalisation (`unicode_normalization`), `punctuation_map`,
    uroman romanisation (only when `oov_policy` is 'uroman'), lowercasing (`lowercase`),
    `oov_map` (only when `oov_policy` is 'map'; keys as the OOV report prints them, i.e.
    after lowercasing), then every run of whitespace becomes one space, trimmed at both ends.
    Numbers are left alone unless a map says otherwise. Vocabulary-independent on purpose:
    characters the tokenizer lacks are left in and reported by `coverage`.
    """
    form = cfg.unicode_normalization
    text = _unicode(text, form)
    text = apply_map(text, cfg.punctuation_map, form)
    if cfg.oov_policy == "uroman":
        text = _unicode(romanize(text), form)
    if cfg.lowercase:
        text = text.lower()
    if cfg.oov_policy == "map":
        text = apply_map(text, cfg.oov_map, form)
    return _WHITESPACE.sub(" ", text).strip()


# --------------------------------------------------------------------------- tokenizer coverage


@dataclass
class Tokenized:
    """What a VitsTokenizer makes of one text: the characters it keeps and those it drops."""

    kept: str
    dropped: list[str]


def tokenizer_view(text: str, tokenizer: VitsTokenizer) -> Tokenized:
    """Reproduce `VitsTokenizer.prepare_for_tokenization` step by step, keeping the losses.

    Same order as transformers 5: `normalize_text` (lowercase, vocab-aware), the language's
    `_preprocess_char`, uroman for `is_uroman` tokenizers when the text has non-ASCII
    characters, then every character outside the vocabulary is dropped and the ends trimmed.
    (A tokenizer with `normalize=False` maps those characters to its unk id instead: also a
    loss, reported the same way.) uroman runs through one cached instance: the tokenizer
    itself builds a new one per call (~2 s).
    """
    if getattr(tokenizer, "phonemize", False):
        raise PipelineError(
            "the tokenizer phonemizes its input (phonemize=True): its coverage cannot be checked "
            "offline; use an MMS-style character tokenizer (phonemize=False)"
        )
    prepared = tokenizer.normalize_text(text) if tokenizer.normalize else text
    prepared = tokenizer._preprocess_char(prepared)
    if getattr(tokenizer, "is_uroman", False) and _NON_ASCII.search(prepared):
        prepared = str(_uroman().romanize_string(prepared))
    vocab = tokenizer.encoder
    dropped = [c for c in prepared if c not in vocab]
    kept = "".join(c for c in prepared if c in vocab).strip()
    return Tokenized(kept=kept, dropped=dropped)


def char_label(char: str) -> str:
    """`U+2019`: a stable, printable key for a character (metrics keys must not contain '.')."""
    return "+".join(f"U+{ord(c):04X}" for c in char)


def char_name(char: str) -> str:
    return unicodedata.name(char, "") or unicodedata.category(char)


@dataclass
class OovChar:
    """One character a tokenizer would silently drop, with where it was seen."""

    char: str
    count: int = 0
    clips: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self, with_examples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "char": self.char,
            "name": char_name(self.char),
            "category": unicodedata.category(self.char),
            "count": self.count,
            "clips": self.clips,
        }
        if with_examples:
            out["examples"] = list(self.examples)
        return out


@dataclass
class OovReport:
    """Characters the tokenizer lacks, across a corpus; deterministic (sorted) output."""

    chars: dict[str, OovChar] = field(default_factory=dict)
    clips_affected: int = 0
    max_examples: int = 3

    def add(self, clip_name: str, text: str, dropped: Iterable[str]) -> None:
        counts = Counter(dropped)
        if not counts:
            return
        self.clips_affected += 1
        for char, n in counts.items():
            entry = self.chars.setdefault(char, OovChar(char))
            entry.count += n
            entry.clips += 1
            if len(entry.examples) < self.max_examples:
                entry.examples.append(f"{clip_name}: {text}")

    def sorted(self) -> list[OovChar]:
        """Most frequent first, then by code point."""
        return sorted(self.chars.values(), key=lambda e: (-e.count, e.char))

    def to_dict(self, with_examples: bool = True) -> dict[str, Any]:
        return {
            "distinct_chars": len(self.chars),
            "distinct_spoken_chars": len(self.spoken()),
            "occurrences": sum(e.count for e in self.chars.values()),
            "clips_affected": self.clips_affected,
            "by_char": {char_label(e.char): e.to_dict(with_examples) for e in self.sorted()},
        }

    def spoken(self) -> list[OovChar]:
        """Letters, marks and digits among the missing characters: these are lost speech."""
        return [e for e in self.sorted() if unicodedata.category(e.char)[0] in "LMN"]

    def lines(self) -> list[str]:
        """Human-readable lines for the log and the dataset card."""
        return [
            f"{e.char!r} {char_label(e.char)} {char_name(e.char)}"
            f"{' (spoken: lost speech)' if unicodedata.category(e.char)[0] in 'LMN' else ''}: "
            f"{e.count}x in {e.clips} clip(s), e.g. {e.examples[0] if e.examples else ''}"
            for e in self.sorted()
        ]
