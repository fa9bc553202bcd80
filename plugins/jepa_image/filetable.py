"""The file list of an image folder, held compactly: one byte string of every path under the
root, their offsets and their labels, three tensors in all.

A Python list of (Path, label) pairs costs about 300 bytes an image (0.4 GB for ImageNet's
1.28M), and DataLoader workers that touch it copy it page by page (reference counts are
writes); three tensors cost the bytes of the paths plus 12 bytes an image, and stay shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch


class FileTable:
    """A sequence of (absolute path, label): `table[i]`, `len(table)`, iteration."""

    CHUNK = 8192  # files per gather in rows()

    def __init__(self, root: Path, blob: torch.Tensor, offsets: torch.Tensor,
                 labels: torch.Tensor):
        self.root = Path(root)
        self.blob, self.offsets, self.labels = blob, offsets, labels

    @classmethod
    def build(cls, root: Path, groups: Iterable[tuple[int, list[Path]]]) -> FileTable:
        """The table of the files of each (label, files) group, in order; every file lies
        under `root`."""
        prefix = len(str(root)) + 1
        chunks: list[bytes] = []
        lengths: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        for label, files in groups:
            encoded = [str(path)[prefix:].encode("utf-8", "surrogateescape") for path in files]
            chunks.append(b"".join(encoded))
            lengths.append(torch.tensor([len(e) for e in encoded], dtype=torch.int64))
            labels.append(torch.full((len(encoded),), label, dtype=torch.int32))
        size = torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int64)
        offsets = torch.zeros(len(size) + 1, dtype=torch.int64)
        torch.cumsum(size, 0, out=offsets[1:])
        data = b"".join(chunks)
        blob = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
                else torch.zeros(0, dtype=torch.uint8))
        return cls(root, blob, offsets,
                   torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def relative(self, index: int) -> str:
        """The path of file `index` under the root, as the scan found it."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return bytes(self.blob[start:end].numpy()).decode("utf-8", "surrogateescape")

    def __getitem__(self, index: int) -> tuple[Path, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"file {index} of {len(self)}")
        index %= len(self)
        return self.root / self.relative(index), int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        for i in range(len(self)):
            yield self[i]

    def select(self, keep: torch.Tensor) -> FileTable:
        """The files where the [n] bool `keep` is True, in order."""
        rows = keep.nonzero().squeeze(1)
        return self.rows(rows)

    def head(self, n: int) -> FileTable:
        """The first n files."""
        return self.rows(torch.arange(min(n, len(self))))

    def rows(self, rows: torch.Tensor) -> FileTable:
        """The files at the int64 positions `rows`, in that order."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        size = ends - starts
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        torch.cumsum(size, 0, out=offsets[1:])
        if len(rows) == 0:
            return FileTable(self.root, torch.zeros(0, dtype=torch.uint8), offsets,
                             self.labels[rows])
        # each byte of the new blob is byte `within` of its file: gathered a chunk of files at
        # a time, so the index tensors stay small beside the blob
        parts = []
        for at in range(0, len(rows), self.CHUNK):
            start, n = starts[at:at + self.CHUNK], size[at:at + self.CHUNK]
            first = torch.cumsum(n, 0) - n
            owner = torch.repeat_interleave(torch.arange(len(n)), n)
            within = torch.arange(int(n.sum())) - first[owner]
            parts.append(self.blob[start[owner] + within])
        return FileTable(self.root, torch.cat(parts), offsets, self.labels[rows])
