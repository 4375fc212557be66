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
    """A frame with its parquet bytes and their md5, ready to be written as is."""

    frame: pd.DataFrame
    payload: bytes
    md5: str

    @property
    def rows(self) -> int:
        return len(self.frame)


def encode_frame(frame: pd.DataFrame) -> EncodedFrame:
    """Serialise deterministically (same frame, same bytes) so hashes are reproducible."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    payload = buffer.getvalue()
    return EncodedFrame(frame, payload, hashlib.md5(payload).hexdigest())


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
