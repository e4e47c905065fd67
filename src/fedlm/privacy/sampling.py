"""Secret cohort sampling: amplification by sampling needs a cohort nobody else can recompute.

Privacy amplification by subsampling (Abadi et al. 2016; Mironov, Talwar and Zhang 2019 for
Poisson sampling; Balle, Barthe and Gaboardi 2018 for sampling without replacement) bounds
the privacy loss of a client *given that the adversary does not know whether it was
sampled*. A cohort drawn from ``federation.seed`` (written to ``config.yaml``) is known to
anyone who reads the run's config, so under DP fedlm draws cohorts from a secret key:

* :func:`new_key`: 32 bytes from the OS CSPRNG (``secrets``);
* :func:`stream`: SHAKE-256 of ``(domain, key, round)``, a keyed XOF (a PRF as long as the
  key is secret, FIPS 202), expanded to uniform 64-bit words; NumPy's PCG64 is not a
  cryptographic generator, so it never touches the key;
* :func:`poisson_cohort`: each client independently with probability ``q``
  (``u_i < q``, ``u_i`` uniform on a ``2^-64`` grid: the rate is exact to ``2^-64``);
* :func:`fixed_cohort`: ``k`` of ``N`` uniformly without replacement (the ``k`` smallest
  of ``N`` independent 64-bit words, ties broken by index, probability below ``N^2 2^-64``).

The key is kept in the run directory with mode 0600 (:func:`write_private`) and in the
checkpoint, so a resumed run draws the same cohorts; never in ``config.yaml`` or
``metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.errors import ConfigError

KEY_BYTES = 32
PRIVATE_DIR = "private"  # in the run directory, mode 0700: the key, the cohorts, per-client metrics
KEY_FILE = "sampling.key"


def new_key() -> bytes:
    """A fresh 256-bit secret from the OS CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def stream(key: bytes, domain: str, round_id: int, words: int) -> np.ndarray:
    """``words`` uniform 64-bit words of SHAKE-256(domain | key | round), shape ``(words,)`` uint64."""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"a sampling key has {KEY_BYTES} bytes, got {len(key)}")
    xof = hashlib.shake_256(f"fedlm|{domain}|".encode() + key + int(round_id).to_bytes(8, "big", signed=True))
    return np.frombuffer(xof.digest(8 * int(words)), dtype="<u8").copy() if words else np.zeros(0, np.uint64)


def derived_seed(key: bytes, domain: str, *parts: int | str) -> int:
    """A 63-bit seed from the key for ``domain`` and ``parts`` (e.g. a client's DP-SGD noise)."""
    tag = "|".join(str(p) for p in parts)
    digest = hashlib.shake_256(f"fedlm|{domain}|{tag}|".encode() + key).digest(8)
    return int.from_bytes(digest, "big") >> 1


def poisson_cohort(key: bytes, round_id: int, client_ids: Sequence[str], rate: float, *,
                   domain: str = "cohort") -> tuple[str, ...]:
    """Each client independently with probability ``rate`` (the order of ``client_ids`` is kept)."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"sampling rate must be in [0, 1], got {rate!r}")
    if rate >= 1.0:
        return tuple(client_ids)
    u = stream(key, domain, round_id, len(client_ids))  # (N,) uint64
    cut = np.uint64(min(int(rate * 2.0**64), 2**64 - 1))  # u < cut: probability floor(rate 2^64) / 2^64
    return tuple(c for c, w in zip(client_ids, u, strict=True) if w < cut)


def fixed_cohort(key: bytes, round_id: int, client_ids: Sequence[str], size: int, *,
                 domain: str = "cohort") -> tuple[str, ...]:
    """``size`` of the clients uniformly without replacement, in the order of ``client_ids``."""
    n = len(client_ids)
    if not 0 <= size <= n:
        raise ConfigError(f"cohort size must be in [0, {n}], got {size!r}")
    u = stream(key, domain, round_id, n)
    order = np.lexsort((np.arange(n), u))  # by word, then index
    keep = np.sort(order[:size])
    return tuple(client_ids[i] for i in keep)


# -- private files ------------------------------------------------------------------------
def private_dir(run_dir: Path) -> Path:
    """``run_dir/private`` with mode 0700 (created if needed)."""
    d = Path(run_dir) / PRIVATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 whatever the umask (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def append_private(path: Path, line: str) -> None:
    """Append one line to ``path``, creating it with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_private(path: Path) -> bytes:
    """The bytes of a private file; refuses one that others may read or write.

    Raises:
        ConfigError: the file is readable or writable by group or others.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} has mode {mode:04o}: others may read or change the run's secret; "
            f"run `chmod 600 {path}` (and check who could have read it)"
        )
    return path.read_bytes()


def save_key(run_dir: Path, key: bytes) -> Path:
    """Keep ``key`` at ``run_dir/private/sampling.key`` (hex, mode 0600); refuses to replace another key."""
    path = private_dir(run_dir) / KEY_FILE
    if path.exists():
        if load_key(run_dir) != key:
            raise ConfigError(
                f"{path} holds another sampling key than this run's; a run directory holds one run: "
                "choose another --out, or resume the run that wrote it"
            )
        return path
    write_private(path, key.hex().encode())
    return path


def load_key(run_dir: Path) -> bytes | None:
    """The key kept in ``run_dir``, or None when there is none."""
    path = Path(run_dir) / PRIVATE_DIR / KEY_FILE
    if not path.is_file():
        return None
    text = read_private(path)
    try:
        key = bytes.fromhex(text.decode().strip())
    except ValueError:
        raise ConfigError(f"{path} is not a hex sampling key; restore it from the checkpoint") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key")
    return key


def dump_json(obj: Any) -> str:
    """One JSON line (sorted keys, non-finite numbers as null)."""
    return json.dumps(_finite(obj), sort_keys=True) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


__all__ = [
    "KEY_BYTES",
    "KEY_FILE",
    "PRIVATE_DIR",
    "append_private",
    "derived_seed",
    "dump_json",
    "fixed_cohort",
    "load_key",
    "new_key",
    "poisson_cohort",
    "private_dir",
    "read_private",
    "save_key",
    "stream",
    "write_private",
]
