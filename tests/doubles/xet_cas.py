"""The Xet content-addressed store as the Hub runs it, enough to give back what `hf_xet` uploaded.

`hf_xet` (buckets, and LFS files of model repos) never sends a file as it is: it cuts files into
chunks, packs chunks into *xorbs* (`POST /v1/xorbs/default/{hash}`) and describes each file as
a list of xorb chunk ranges in a *shard* (`POST /v1/shards`). The Hub then names a file by its
Xet hash (bucket `addFile` operations) or by its sha256 (a commit's `lfsFile`). This store keeps
both and rebuilds the bytes, so the double can serve what the real service would serve.
(`hf_xet` offers no call that decodes a raw xorb or shard: its downloads ask the CAS server for
a reconstruction, which is the part this store plays; so the formats are read here.)

Formats, as `huggingface/xet-core` writes them (`xet_core_structures/src/`):
- xorb (`xorb_object/xorb_chunk_format.rs`): chunks, each an 8-byte header
  `version u8 | compressed_len u24 | scheme u8 | uncompressed_len u24` (little endian) and the
  payload, compressed with scheme 0 none, 1 LZ4 frame, 2 byte-grouping-4 then LZ4; then a footer
  starting with `XETBLOB` (`xorb_object_format.rs`).
- shard (`metadata_shard/shard_format.rs`, `file_structs.rs`): a 48-byte header (32-byte tag,
  version, footer size), then the file-info section: per file a 48-byte header
  `file_hash[32] | flags u32 | num_entries u32 | unused u64`, `num_entries` 48-byte entries
  `xorb_hash[32] | xorb_flags u32 | unpacked_bytes u32 | chunk_start u32 | chunk_end u32`
  (end exclusive), then one 48-byte verification entry per entry when flag bit 31 is set and
  one metadata entry (`sha256[32]` …) when bit 30 is set; a bookend header of 0xFF bytes ends it.
- hashes print as four little-endian u64 words, each as 16 hex digits (`merklehash/data_hash.rs`).
"""

from __future__ import annotations

import hashlib
import struct
import threading

import lz4.frame

_ENTRY = 48
_SHARD_HEADER = 48
_WITH_VERIFICATION = 1 << 31
_WITH_METADATA_EXT = 1 << 30
_BOOKEND = b"\xff" * 32
_XORB_FOOTER = b"XETBLOB"


def hash_hex(raw: bytes) -> str:
    """A 32-byte Xet hash as its printed form (four little-endian u64 words, 16 hex digits each)."""
    return "".join(f"{int.from_bytes(raw[i : i + 8], 'little'):016x}" for i in range(0, 32, 8))


def _bg4_regroup(data: bytes) -> bytes:
    """Undo byte grouping: the payload holds bytes 0,4,8…, then 1,5,9…, then 2,6,…, then 3,7,…"""
    n = len(data)
    sizes = [n // 4 + (1 if r < n % 4 else 0) for r in range(4)]
    out = bytearray(n)
    start = 0
    for r, size in enumerate(sizes):
        out[r::4] = data[start : start + size]
        start += size
    return bytes(out)


def xorb_chunks(body: bytes) -> list[bytes]:
    """The uncompressed chunks of a serialized xorb, in order."""
    chunks, at = [], 0
    while at + 8 <= len(body) and not body.startswith(_XORB_FOOTER, at):
        version, scheme = body[at], body[at + 4]
        compressed = int.from_bytes(body[at + 1 : at + 4], "little")
        size = int.from_bytes(body[at + 5 : at + 8], "little")
        if version != 0:
            raise ValueError(f"xorb chunk header version {version} at byte {at}")
        payload = body[at + 8 : at + 8 + compressed]
        if scheme == 0:
            data = payload
        elif scheme == 1:
            data = lz4.frame.decompress(payload)
        elif scheme == 2:
            data = _bg4_regroup(lz4.frame.decompress(payload))
        else:
            raise ValueError(f"xorb chunk compression scheme {scheme} at byte {at}")
        if len(data) != size:
            raise ValueError(f"xorb chunk at byte {at}: {len(data)} bytes, header says {size}")
        chunks.append(data)
        at += 8 + compressed
    return chunks


def shard_files(body: bytes) -> dict[str, list[tuple[str, int, int]]]:
    """File hash → its segments `(xorb hash, first chunk, end chunk)` from a serialized shard."""
    files: dict[str, list[tuple[str, int, int]]] = {}
    at = _SHARD_HEADER
    while at + _ENTRY <= len(body):
        file_hash = body[at : at + 32]
        if file_hash == _BOOKEND:
            break
        flags, count = struct.unpack_from("<II", body, at + 32)
        at += _ENTRY
        segments = []
        for _ in range(count):
            xorb, start, end = body[at : at + 32], *struct.unpack_from("<II", body, at + 40)
            segments.append((hash_hex(xorb), start, end))
            at += _ENTRY
        if flags & _WITH_VERIFICATION:
            at += _ENTRY * count
        if flags & _WITH_METADATA_EXT:
            at += _ENTRY
        files[hash_hex(file_hash)] = segments
    return files


class XetStore:
    """Xorbs and shards as uploaded; files rebuilt by Xet hash or by sha256."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.xorbs: dict[str, list[bytes]] = {}
        self.files: dict[str, list[tuple[str, int, int]]] = {}
        self.by_sha256: dict[str, str] = {}  # sha256 hex -> xet file hash

    def put_xorb(self, xorb_hash: str, body: bytes) -> bool:
        chunks = xorb_chunks(body)
        with self._lock:
            inserted = xorb_hash not in self.xorbs
            self.xorbs[xorb_hash] = chunks
        return inserted

    def put_shard(self, body: bytes) -> None:
        files = shard_files(body)
        with self._lock:
            self.files.update(files)
        for file_hash in files:
            data = self.read(file_hash)
            with self._lock:
                self.by_sha256[hashlib.sha256(data).hexdigest()] = file_hash

    def read(self, file_hash: str) -> bytes:
        """The bytes of the file with this Xet hash (KeyError when no shard described it)."""
        if file_hash not in self.files and file_hash == _EMPTY_FILE_HASH:
            return b""
        with self._lock:
            segments = self.files[file_hash]
            return b"".join(b"".join(self.xorbs[x][s:e]) for x, s, e in segments)

    def read_sha256(self, sha256: str) -> bytes:
        return self.read(self.by_sha256[sha256])


# An empty file has no chunks and no shard entry; hf_xet names it by the hash of nothing.
_EMPTY_FILE_HASH = "0" * 64
