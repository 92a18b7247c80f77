"""Reading transcripts: plain text for one clip, or ``clip<TAB>text`` lines for a folder."""

from __future__ import annotations

from pathlib import Path

from avatar.errors import path_error


def read_transcript(path: Path, clip_ids: list[str]) -> dict[str, str]:
    """Map clip id -> text. Tab-separated lines name clips (by file stem); a file without
    tabs is the text of the only clip."""
    if not path.is_file():
        raise path_error(path, "transcript not found")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise path_error(path, "transcript is not UTF-8 text") from None
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if not lines:
        raise path_error(path, "transcript is empty")
    if all("\t" in ln for ln in lines):
        table = {}
        for ln in lines:
            name, text = ln.split("\t", 1)
            table[Path(name.strip()).stem] = text.strip()
        return {cid: table[cid] for cid in clip_ids if cid in table}
    if any("\t" in ln for ln in lines):
        raise path_error(path, "mixes 'clip<TAB>text' lines with plain lines; use one form")
    if len(clip_ids) != 1:
        raise path_error(path, f"is plain text but {len(clip_ids)} clips were given; use "
                         "'clip<TAB>text' lines to say which text belongs to which clip")
    return {clip_ids[0]: " ".join(ln.strip() for ln in lines)}
