"""Numbers as English words: cardinals, ordinals, years, decimals."""

from __future__ import annotations

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"),
           (100, "hundred"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def cardinal(n: int) -> str:
    """0 <= n < 10**15 in words ('one hundred twenty three')."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in _SCALES:
        if n >= size:
            if n >= 10**15:
                return " ".join(_ONES[int(d)] for d in str(n))
            rest = n % size
            return cardinal(n // size) + " " + name + ("" if rest == 0 else " " + cardinal(rest))
    raise AssertionError(n)


def ordinal(n: int) -> str:
    words = cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year(n: int) -> str:
    """1999 -> nineteen ninety nine; 2005 -> two thousand five; 2026 -> twenty twenty six."""
    if 2000 <= n <= 2009:
        return cardinal(n)
    if 1100 <= n <= 2099 and n % 100 != 0:
        hi, lo = divmod(n, 100)
        return cardinal(hi) + " " + ("oh " + cardinal(lo) if lo < 10 else cardinal(lo))
    if 1100 <= n <= 2099:
        return cardinal(n // 100) + " hundred"
    return cardinal(n)


def decimal(text: str) -> str:
    """'3.14' -> three point one four."""
    whole, _, frac = text.partition(".")
    out = cardinal(int(whole or "0"))
    if frac:
        out += " point " + " ".join(_ONES[int(d)] for d in frac)
    return out
