"""Canaries: random secrets planted in client data to measure what a model memorised.

Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing Unintended Memorization
in Neural Networks". A canary is a sentence built from a fixed template and a random
secret (``"my secret code is 281504"``). It is inserted ``repeats`` times into one
client's training text; after training, ``fedlm.privacy.audit.exposure`` ranks it
among random secrets of the same format. The template and alphabet travel with each
canary so that candidates are drawn from exactly the space the secret came from.

Every choice here is a pure function of its ``seed``: the same call plants the same
canaries in the same places.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from fedlm.errors import ConfigError

SLOT = "{}"  # where the secret goes in a template


@dataclass(frozen=True)
class Canary:
    """One planted sentence: ``text == template.replace("{}", secret)``.

    Attributes:
        text: the full sentence inserted into training data.
        secret: the random part, ``length`` symbols of ``alphabet``.
        template: the sentence with ``{}`` where the secret goes.
        alphabet: the symbols a secret is drawn from (distinct characters).
    """

    text: str
    secret: str
    template: str
    alphabet: str

    @property
    def prefix(self) -> str:
        """The template text before the secret (what an attacker would prompt with)."""
        return self.template.split(SLOT, 1)[0]

    @property
    def length(self) -> int:
        return len(self.secret)

    def with_secret(self, secret: str) -> str:
        """The sentence this canary's template makes with another secret."""
        return self.template.replace(SLOT, secret)

    @property
    def space_size(self) -> int:
        """|R|, the number of possible secrets: ``len(alphabet) ** length``."""
        return len(self.alphabet) ** self.length


def check_format(template: str, alphabet: str, length: int) -> None:
    """Reject a canary format that cannot make distinct, rankable secrets.

    Raises:
        ConfigError: naming the argument, its value and the fix.
    """
    if template.count(SLOT) != 1:
        raise ConfigError(
            f"canary template must contain '{{}}' exactly once (where the secret goes), got "
            f"{template!r}; e.g. 'my secret code is {{}}'"
        )
    if len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
        raise ConfigError(
            f"canary alphabet must hold at least 2 distinct characters with no repeats, got "
            f"{alphabet!r}; e.g. '0123456789'"
        )
    if length < 1:
        raise ConfigError(f"canary secret length must be >= 1, got {length!r}; e.g. 6")


def make_canaries(
    n: int,
    *,
    seed: int,
    template: str = "my secret code is {}",
    alphabet: str = "0123456789",
    length: int = 6,
) -> list[Canary]:
    """Draw ``n`` canaries with distinct secrets, uniformly from ``alphabet ** length``.

    Raises:
        ConfigError: bad format, or more canaries than distinct secrets.
    """
    check_format(template, alphabet, length)
    space = len(alphabet) ** length
    if n < 0 or n > space:
        raise ConfigError(
            f"number of canaries must be in [0, {space}] (distinct secrets of length {length} "
            f"over {len(alphabet)} symbols), got {n!r}; lower it or lengthen the secret"
        )
    rng = np.random.default_rng([seed, 0xC1A])
    secrets = _distinct_secrets(rng, alphabet, length, n, exclude=set())
    return [Canary(template.replace(SLOT, s), s, template, alphabet) for s in secrets]


def sample_candidates(
    canary: Canary, count: int, *, seed: int | Sequence[int], exclude: Collection[str] = ()
) -> list[str]:
    """``count`` distinct random secrets of the canary's format, none equal to its secret.

    Sampled uniformly without replacement from R minus the true secret (and minus
    ``exclude``, e.g. the other planted secrets, whose memorisation would otherwise lower
    this canary's rank), so the canary's rank among them estimates its rank in R
    (Carlini et al. 2019, section 4.2).

    Raises:
        ConfigError: ``count`` is negative or more than the secrets left to draw.
    """
    taken = {canary.secret} | {s for s in exclude if len(s) == canary.length}
    room = canary.space_size - len(taken)
    if count < 0 or count > room:
        raise ConfigError(
            f"candidates must be in [0, {room}] for secrets of length {canary.length} over "
            f"{len(canary.alphabet)} symbols ({len(taken)} planted), got {count!r}; "
            "lower candidates or lengthen the secret"
        )
    rng = np.random.default_rng(seed)
    return _distinct_secrets(rng, canary.alphabet, canary.length, count, exclude=taken)


def _distinct_secrets(
    rng: np.random.Generator, alphabet: str, length: int, count: int, *, exclude: set[str]
) -> list[str]:
    """``count`` distinct secrets not in ``exclude``, in draw order."""
    space = len(alphabet) ** length
    symbols = np.array(list(alphabet))
    if space <= 2 * (count + len(exclude)) + 64:
        # Small space: enumerate it (rejection would loop for long near the end).
        every = [_decode(i, alphabet, length) for i in range(space)]
        allowed = [s for s in every if s not in exclude]
        pick = rng.choice(len(allowed), size=count, replace=False)
        return [allowed[i] for i in pick]
    seen = set(exclude)
    out: list[str] = []
    while len(out) < count:
        # Rejection in vectorised draws: at most half the space is taken, so each draw
        # is accepted with probability >= 1/2.
        draws = rng.integers(0, len(alphabet), size=(2 * (count - len(out)), length))
        for row in draws:
            s = "".join(symbols[row])
            if s not in seen:
                seen.add(s)
                out.append(s)
                if len(out) == count:
                    break
    return out


def _decode(index: int, alphabet: str, length: int) -> str:
    """The ``index``-th secret of ``alphabet ** length`` in base ``len(alphabet)``."""
    base = len(alphabet)
    chars = []
    for _ in range(length):
        index, digit = divmod(index, base)
        chars.append(alphabet[digit])
    return "".join(reversed(chars))


def choose_canary_clients(client_ids: Sequence[str], *, n: int, seed: int) -> list[str]:
    """The clients that receive canaries when ``audit.canary_clients="auto"``.

    ``min(n, len(client_ids))`` distinct clients drawn by ``seed``, returned in sorted order,
    so each chosen client holds at least one canary and no canary is shared.
    """
    ids = sorted(set(client_ids))
    if not ids:
        raise ConfigError("no clients to place canaries in; the federation has no client ids")
    k = min(max(n, 0), len(ids))
    pick = np.random.default_rng([seed, 0xC11E]).choice(len(ids), size=k, replace=False)
    return sorted(ids[i] for i in pick)


def canary_placement(canaries: Sequence[Canary], clients: Sequence[str]) -> dict[str, list[Canary]]:
    """Which client holds which canary: canary ``i`` goes to ``clients[i % len(clients)]``.

    Round-robin over the given order, so the assignment can be read off without a seed.

    Raises:
        ConfigError: ``clients`` is empty or repeats an id.
    """
    if not clients:
        raise ConfigError("clients must name at least one client to hold the canaries")
    if len(set(clients)) != len(clients):
        raise ConfigError(f"clients must not repeat an id, got {list(clients)!r}")
    out: dict[str, list[Canary]] = {c: [] for c in clients}
    for i, canary in enumerate(canaries):
        out[clients[i % len(clients)]].append(canary)
    return out


def insert_canaries(
    data: dict[str, list[str]] | list[dict[str, str]],
    canaries: Sequence[Canary],
    *,
    clients: Sequence[str],
    repeats: int,
    seed: int,
    client_field: str = "client",
    text_field: str = "text",
) -> dict[str, list[str]] | list[dict[str, str]]:
    """Return a copy of ``data`` with each canary ``repeats`` times in its client's text.

    Canary ``i`` goes to ``clients[i % len(clients)]`` (see ``canary_placement``). Each copy
    is its own text (its own record), so that LM chunking sees it as a separate document,
    placed at random positions among its client's texts that depend only on ``seed`` and
    the client id. Original texts keep their order (records: their order across all
    clients, each copy going just before one of its client's records or after its last).
    The input is not modified.

    Args:
        data: either ``{client_id: [text, ...]}`` or a list of records (dicts of strings)
            whose client is ``record[client_field]`` (natural partition). New records are
            ``{client_field: client_id, text_field: canary.text}``.
        canaries: from ``make_canaries``.
        clients: the clients that receive canaries; each must exist in ``data``.
        repeats: copies of each canary (Carlini et al. vary it to see exposure grow).
        seed: fixes the positions.
        client_field: records only: the field naming a record's client.
        text_field: records only: the field holding the text.

    Raises:
        ConfigError: ``repeats < 1``, or a client is unknown or listed twice.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats!r}; each canary needs a copy")
    placement = canary_placement(canaries, clients)
    if isinstance(data, dict):
        _check_known(clients, set(data))
        out = {cid: list(texts) for cid, texts in data.items()}
        for cid in out:
            new = [c.text for c in placement.get(cid, []) for _ in range(repeats)]
            out[cid] = _interleave(out[cid], new, seed=seed, client=cid)
        return out
    owners = [r.get(client_field) for r in data]
    _check_known(clients, {o for o in owners if o is not None}, field=client_field)
    # Interleave within each client's own records, then attach each canary copy just
    # before the client record that follows it (or after the client's last record), so
    # every original record keeps its order relative to all others.
    before: dict[int, list[dict[str, str]]] = {}
    after: dict[int, list[dict[str, str]]] = {}
    for cid in sorted({o for o in owners if o is not None}):
        new = [
            {client_field: cid, text_field: c.text}
            for c in placement.get(cid, [])
            for _ in range(repeats)
        ]
        mine = [i for i, o in enumerate(owners) if o == cid]
        pending: list[dict[str, str]] = []
        for item in _interleave(mine, new, seed=seed, client=cid):
            if isinstance(item, int):
                before[item], pending = pending, []
            else:
                pending.append(item)
        after[mine[-1]] = pending
    result: list[dict[str, str]] = []
    for i, r in enumerate(data):
        result.extend(before.get(i, []))
        result.append(dict(r))
        result.extend(after.get(i, []))
    return result


def _interleave(items: list, new: list, *, seed: int, client: str) -> list:
    """``items`` with ``new`` inserted at seeded positions, both keeping their order.

    The positions depend on ``seed`` and the client id only (a stable SHA-256, not Python's
    salted ``hash``), so one client's placement does not change when others are added.
    """
    if not new:
        return list(items)
    salt = int.from_bytes(hashlib.sha256(client.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, salt, 0x1A5])
    total = len(items) + len(new)
    slots = set(rng.choice(total, size=len(new), replace=False).tolist())  # where new items sit
    old_it, new_it = iter(items), iter(new)
    return [next(new_it) if i in slots else next(old_it) for i in range(total)]


def _check_known(clients: Sequence[str], known: set[str], *, field: str | None = None) -> None:
    unknown = [c for c in clients if c not in known]
    if unknown:
        where = f" (records' {field!r} field)" if field else ""
        raise ConfigError(
            f"canary clients {unknown!r} are not in the data{where}; pick from "
            f"{sorted(known)[:10]!r}{' ...' if len(known) > 10 else ''}"
        )
