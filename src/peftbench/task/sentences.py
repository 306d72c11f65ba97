"""Sentence splitting, the one splitter of the package: ROUGE-Lsum's sentence lines and Lead-3's first sentences
both come from it. pysbd is rule-based (abbreviations, initials, decimals, quotes) and needs no data at run time,
unlike nltk's punkt, which must be downloaded."""

from __future__ import annotations

import functools

import pysbd


@functools.cache
def _segmenter() -> pysbd.Segmenter:
    # Built once, on first use: its rule tables take a moment to compile. clean=False keeps the text as given.
    return pysbd.Segmenter(language="en", clean=False)


def sentences(text: str) -> list[str]:
    """The sentences of a text, each stripped of the white space pysbd leaves around it; none for a blank text."""
    return [sentence.strip() for sentence in _segmenter().segment(text) if sentence.strip()]
