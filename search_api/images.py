"""Decoding a shopper's uploaded photo, safely.

Uploads are untrusted: the size is checked before decoding, Pillow's decompression-bomb
guard is made an error (not a warning), and the image is fully decoded here so a truncated
file fails with a 4xx instead of deep inside the CNN.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from search_api.errors import PayloadTooLarge, Unprocessable

MAX_PIXELS = 40_000_000  # ~6300x6300: far above any product photo, far below a bomb


def decode_base64(data: str, max_bytes: int, field: str = "image") -> bytes:
    """Bytes of a base64 (or data: URL) image, refusing oversize input before decoding it all."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLarge(f"{field} is larger than the {max_bytes} byte limit", field=field)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unprocessable(f"{field} is not valid base64: {exc}", field=field, code="invalid_image") from exc


def open_image(data: bytes, max_bytes: int, field: str = "image") -> Image.Image:
    """An RGB image from uploaded bytes, or a 413/422 that says what is wrong."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field} is {len(data)} bytes; the limit is {max_bytes}", field=field)
    if not data:
        raise Unprocessable(f"{field} is empty", field=field, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise Unprocessable(f"{field} is {image.width}x{image.height} pixels; the limit is {MAX_PIXELS}",
                                    field=field, code="invalid_image")
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise Unprocessable(f"{field} could not be decoded as an image (JPEG, PNG or WebP): {exc}", field=field,
                            code="invalid_image") from exc
