"""``sha256_file`` equals hashlib's digest of the whole content, across chunk boundaries."""

import hashlib

from fedlm.digests import sha256_file


def test_known_digest_of_abc(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")  # FIPS 180-2, appendix B.1
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_file_larger_than_one_chunk(tmp_path):
    data = bytes(range(256)) * ((3 << 20) // 256 + 7)  # three 1 MiB chunks and a tail
    path = tmp_path / "big"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
