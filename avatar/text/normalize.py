"""English text normalisation: what is written becomes what is said.

Numbers, ordinals, dates, times, currency, percentages, units, common abbreviations, URLs
and e-mail addresses are spelled out; markup, emoji and control characters are dropped.
Rules run in a fixed order, most specific first (a date before a bare number).
"""

from __future__ import annotations

import re
import unicodedata

from avatar.text.numbers import cardinal, decimal, ordinal, year

_MONTHS = ("January February March April May June July August September October November "
           "December").split()

_ABBREVIATIONS = {
    "mr.": "mister", "mrs.": "missus", "ms.": "miz", "dr.": "doctor", "prof.": "professor",
    "st.": "saint", "jr.": "junior", "sr.": "senior", "vs.": "versus", "etc.": "et cetera",
    "e.g.": "for example", "i.e.": "that is", "approx.": "approximately", "no.": "number",
    "inc.": "incorporated", "ltd.": "limited", "co.": "company", "dept.": "department",
    "mt.": "mount", "ave.": "avenue", "jan.": "January", "feb.": "February", "aug.": "August",
    "sept.": "September", "oct.": "October", "nov.": "November", "dec.": "December",
}
ABBREVIATION_RE = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted(_ABBREVIATIONS, key=len,
                                                            reverse=True)) + r")",
    re.IGNORECASE)

_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter",
    "centimeters"), "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"), "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"), "ft": ("foot", "feet"), "mi": ("mile", "miles"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour",
    "kilometers per hour"), "ms": ("millisecond", "milliseconds"), "s": ("second", "seconds"),
    "min": ("minute", "minutes"), "h": ("hour", "hours"), "hrs": ("hour", "hours"),
    "kb": ("kilobyte", "kilobytes"), "mb": ("megabyte", "megabytes"),
    "gb": ("gigabyte", "gigabytes"), "tb": ("terabyte", "terabytes"),
    "hz": ("hertz", "hertz"), "khz": ("kilohertz", "kilohertz"), "mhz": ("megahertz",
    "megahertz"), "ghz": ("gigahertz", "gigahertz"), "w": ("watt", "watts"),
    "kw": ("kilowatt", "kilowatts"), "v": ("volt", "volts"), "l": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"), "°c": ("degree Celsius", "degrees Celsius"),
    "°f": ("degree Fahrenheit", "degrees Fahrenheit"),
}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent",
             "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "¥": ("yen", "yen", "", "")}
_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "%": " percent ",
            "#": " number "}
_YEAR_CONTEXT = re.compile(r"(?:\b(?:in|since|by|from|until|till|of|year|before|after|"
                           r"around|circa|during)\s+)$", re.IGNORECASE)

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"


def _number(text: str) -> str:
    text = text.replace(",", "")
    return decimal(text) if "." in text else cardinal(int(text))


def _plural(value: str, one: str, many: str) -> str:
    return one if value.replace(",", "") in ("1", "1.0") else many


def strip_markup(text: str) -> str:
    """Drop HTML tags, Markdown emphasis and links (keeping link text), control characters,
    emoji and other pictographs."""
    text = re.sub(r"<[^>\n]{1,200}>", " ", text)
    text = re.sub(r"\[([^\]\n]*)\]\([^)\n]*\)", r"\1", text)
    text = re.sub(r"[*_`~]{1,3}(?=\S)|(?<=\S)[*_`~]{1,3}", "", text)
    text = re.sub(r"^\s{0,3}#{1,6}\s+", "", text, flags=re.MULTILINE)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t\r":
            out.append(" ")
        elif ch == "°":
            out.append(ch)  # a unit sign, spoken with its number
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn", "So", "Sk") or 0x1F000 <= ord(ch) <= 0x1FAFF:
            continue  # control, format, private use, emoji and pictographs
        else:
            out.append(ch)
    return "".join(out)


def _url(m: re.Match) -> str:
    url = re.sub(r"^https?://", "", m.group(0)).rstrip("/.,;:")
    url = re.sub(r"^www\.", "w w w dot ", url)
    return " " + re.sub(r"[./:\-_?=&]", lambda c: {".": " dot ", "/": " slash ", ":": " colon ",
                                                   "-": " dash ", "_": " underscore ",
                                                   "?": " question mark ", "=": " equals ",
                                                   "&": " and "}[c.group()], url) + " "


def _email(m: re.Match) -> str:
    user, domain = m.group(0).split("@", 1)
    return f" {user.replace('.', ' dot ')} at {domain.replace('.', ' dot ')} "


def _currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), m.group(3)
    if scale:
        return f" {_number(amount)} {scale} {many} "
    whole, _, cents = amount.partition(".")
    out = f"{cardinal(int(whole))} {one if whole == '1' else many}"
    if cents and sub_one and int(cents[:2].ljust(2, "0")):
        c = int(cents[:2].ljust(2, "0"))
        out += f" {cardinal(c)} {sub_one if c == 1 else sub_many}"
    return f" {out} "


def _time(m: re.Match) -> str:
    h, mnt, ampm = int(m.group(1)), int(m.group(2)), (m.group(3) or "").lower()
    if h > 24 or mnt > 59:
        return m.group(0)
    words = cardinal(h)
    if mnt == 0:
        words += "" if ampm else " o'clock"
    elif mnt < 10:
        words += " oh " + cardinal(mnt)
    else:
        words += " " + cardinal(mnt)
    if ampm:
        words += " " + " ".join(ampm.replace(".", "").upper())
    return f" {words} "


def _iso_date(m: re.Match) -> str:
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    return f" {_MONTHS[mo - 1]} {ordinal(d)}, {year(y)} "


def _us_date(m: re.Match) -> str:
    mo, d, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    return f" {_MONTHS[mo - 1]} {ordinal(d)}, {year(y)} "


def _unit(m: re.Match) -> str:
    value, unit = m.group(1), m.group(2)
    one, many = _UNITS[unit.lower()]
    return f" {_number(value)} {_plural(value, one, many)} "


def _bare_number(m: re.Match, text: str) -> str:
    raw = m.group(0)
    sign = "minus " if raw.startswith("-") else ""
    raw = raw.lstrip("-")
    plain = raw.replace(",", "")
    if plain.isdigit() and len(plain) == 4 and _YEAR_CONTEXT.search(text[: m.start()]):
        return f" {sign}{year(int(plain))} "
    return f" {sign}{_number(raw)} "


_UNIT_RE = re.compile(r"(" + _NUM + r")\s?(" + "|".join(
    re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) + r")(?![\w°/])",
    re.IGNORECASE)


def normalize_english(text: str) -> str:
    t = strip_markup(text)
    t = re.sub(r"https?://\S+|www\.\S+", _url, t)
    t = re.sub(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", _email, t)
    t = ABBREVIATION_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], t)
    t = re.sub(r"([$€£¥])\s?(" + _NUM + r")(?:\s?(thousand|million|billion|trillion)\b)?",
               _currency, t)
    t = re.sub(r"(" + _NUM + r")\s?%", lambda m: f" {_number(m.group(1))} percent ", t)
    t = re.sub(r"\b(\d{4})-(\d{2})-(\d{2})\b", _iso_date, t)
    t = re.sub(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b", _us_date, t)
    t = re.sub(r"\b(\d{1,2}):(\d{2})(?:\s?(am|pm|a\.m\.|p\.m\.))?(?![\w:])", _time, t,
               flags=re.IGNORECASE)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: f" {ordinal(int(m.group(1)))} ", t,
               flags=re.IGNORECASE)
    t = _UNIT_RE.sub(_unit, t)
    t = re.sub(r"\b(\d+)\s?[-–]\s?(\d+)\b", r"\1 to \2", t)  # ranges: 5-10
    t = re.sub(r"(?<!\w)-?(?:" + _NUM + r")", lambda m: _bare_number(m, t), t)
    t = re.sub(r"[&+=@%#]", lambda m: _SYMBOLS[m.group()], t)
    t = re.sub(r"\s+([,.!?;:])", r"\1", t)
    return re.sub(r"\s+", " ", t).strip()
