"""Image bytes from a data set (a `datasets` ``Image`` column, raw bytes) as files in a content-addressed folder.

Records hold image *paths* and the controller sends the files' bytes inline, so images that a source
holds as bytes are written out once: the file name is the SHA-256 of the bytes plus the suffix of their
format (``<sha256>.png``), so the same image in many rows, splits or loads is one file, and a file that
exists already is never written again. Each write goes to a temporary file renamed into place, so a
crash or a second process loading the same data never leaves a torn image behind.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mpo.data.formats import absolute
from mpo.durable import atomic_write

#: PIL format -> file suffix where the lower-cased format name is not the usual suffix.
_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif", "MPO": ".jpg"}


def digest(data: bytes) -> str:
    """The content address of image bytes (hex SHA-256)."""
    return hashlib.sha256(data).hexdigest()


def image_suffix(data: bytes) -> str:
    """The file suffix of the image format of ``data``; ValueError with the reason when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = image.format
    except UnidentifiedImageError as exc:  # its message would only name our in-memory buffer
        raise ValueError(f"unreadable image bytes: not an image format PIL knows ({len(data)} bytes)") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ValueError(f"unreadable image bytes: {type(exc).__name__}: {exc}") from exc
    if not kind:
        raise ValueError("unreadable image bytes: unknown format")
    return _SUFFIXES.get(kind, f".{kind.lower()}")


class ImageStore:
    """A folder of image files named by their content; ``put`` returns the file for some bytes."""

    def __init__(self, root: Path) -> None:
        self.root = absolute(root)  # records hold absolute paths
        self._stored: dict[str, Path] = {}  # digest -> file, so repeated images are hashed and checked once

    def put(self, data: bytes) -> Path:
        """The file holding ``data`` (written now if it is not there yet); ValueError if not an image."""
        key = digest(data)
        if key not in self._stored:
            target = self.root / f"{key}{image_suffix(data)}"
            if not target.is_file():
                atomic_write(target, data)
            self._stored[key] = target
        return self._stored[key]
