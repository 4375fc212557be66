"""Parquet encoding, content hashes and atomic writes shared by every data product.

The content hash is DVC's: the md5 of the file's bytes. Computing it where the bytes are produced
lets an asset return its `DataVersion` before the IO manager writes the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class EncodedFrame:
    """Parquet bytes, their md5 and the frame's shape, ready to be written as is.

    The frame itself is not kept: a 730-day backfill holds every partition's bytes until the IO
    manager writes them, and keeping the frames as well doubled peak memory.
    """

    payload: bytes
    md5: str
    rows: int
    dtypes: tuple[tuple[str, str], ...]


def encode_frame(frame: pd.DataFrame) -> EncodedFrame:
    """Serialise deterministically (same frame, same bytes) so hashes are reproducible."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    payload = buffer.getvalue()
    dtypes = tuple((str(c), str(t)) for c, t in frame.dtypes.items())
    return EncodedFrame(payload, hashlib.md5(payload).hexdigest(), len(frame), dtypes)


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """DVC-compatible md5 of a file, streamed so large files do not load into memory."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def combined_md5(hashes: list[str]) -> str:
    """One version for a set of partitions, stable under ordering of the input."""
    return hashlib.md5("\n".join(sorted(hashes)).encode()).hexdigest()


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_frame(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path, engine="pyarrow")
