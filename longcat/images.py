"""The one place where untrusted image bytes become a clean RGB PIL image.

Used by the in-process engine, the gRPC servers and the trainer's dataset loader, so every caller gets
the same rules: a size limit checked before any pixel is decoded, a full decode so truncated files fail
here (not halfway through a denoising run), EXIF orientation applied, and every mode mapped to RGB with
transparency composited on white. Every failure is an ``InvalidImage`` naming the request field.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
from PIL import Image, ImageOps

from longcat.errors import InvalidImage, NotFound

# Decoded-size limit (decompression-bomb guard): 64 Mpx is 8192x8192, far above what the model uses.
# PIL's own global limit (Image.MAX_IMAGE_PIXELS, ~89 Mpx warning / ~179 Mpx error) still applies on top.
DEFAULT_MAX_INPUT_PIXELS = 64 * 1024 * 1024

# Only these decoders see untrusted bytes; Image.open would otherwise try every plugin (EPS, for one,
# hands the file to Ghostscript). "JPEG" also covers multi-picture camera JPEGs (PIL's MPO).
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Modes whose transparency is a palette alpha table or a color key in img.info (PNG tRNS, GIF).
_KEYED_MODES = {"1", "L", "P", "RGB"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
# Modes PNG can store as they are; anything else goes through to_rgb first.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


def decode_image(data: bytes, field: str = "image", max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WebP (also GIF/BMP/TIFF; first frame if animated) bytes to an upright RGB image."""
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImage(f"must be bytes, not {type(data).__name__}", field)
    if not data:
        raise InvalidImage("is empty", field)
    try:
        img = Image.open(io.BytesIO(data), formats=_FORMATS)
        # Check the header's size before load() allocates and decodes anything.
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"has zero size ({width}x{height})", field)
        if width * height > max_pixels:
            raise InvalidImage(
                f"is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels", field
            )
        img.load()  # full decode now, so truncated or corrupt data fails here
        img = ImageOps.exif_transpose(img)  # also drops us from the file object: a plain in-memory copy
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning only reaches here when a warnings filter turns it into an error.
        raise InvalidImage(f"is too large to decode safely ({e})", field) from e
    except MemoryError:
        raise
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, EOFError, struct.error...
        why = "not a recognised image format" if isinstance(e, Image.UnidentifiedImageError) else \
            f"{type(e).__name__}: {e}"
        raise InvalidImage(f"cannot be decoded as PNG, JPEG or WebP ({why})", field) from e
    return to_rgb(img, field)


def load_image_file(
    path: str | os.PathLike, field: str = "image", max_pixels: int = DEFAULT_MAX_INPUT_PIXELS
) -> Image.Image:
    """Read an image file and decode it with the same rules as request bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise NotFound(f"no such file: {os.fspath(path)}", field) from e
    except OSError as e:
        raise InvalidImage(f"cannot read {os.fspath(path)} ({e.strerror or e})", field) from e
    return decode_image(data, field, max_pixels)


def to_rgb(img: Image.Image, field: str = "image") -> Image.Image:
    """Map any PIL mode to 8-bit RGB; transparent areas become white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _ALPHA_MODES or (mode in _KEYED_MODES and "transparency" in img.info):
        # Composite on white: the usual background for edited product shots and documents, and what a
        # viewer shows; keeping the hidden RGB under alpha=0 would leak arbitrary colors into the model.
        if mode == "La":
            img = img.convert("LA")  # premultiplied; PIL cannot go straight to RGBA
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        # Scale by the 16-bit range; PIL's own convert("L") clips at 255 and turns most 16-bit images white.
        values = np.asarray(img).astype(np.uint16)  # also turns big-endian I;16B into native order
        return Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    if mode == "I":
        # 32-bit ints, in practice 16-bit data (PNG 16-bit grayscale often opens as "I").
        values = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        return Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    if mode == "F":
        # Floats are taken as 0..255 values (PIL's own convention for "F"); NaN becomes black.
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8)).convert("RGB")
    # P, L, 1, CMYK, YCbCr, LAB, HSV, RGBX...: PIL's conversion is right for these.
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InvalidImage(f"unsupported image mode {mode}", field) from e


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels: no timestamps, text, EXIF, ICC or DPI chunks."""
    if img.mode not in _PNG_MODES:
        img = to_rgb(img)
    # PIL's PNG writer also reads some chunks (icc_profile, transparency) from img.info: drop them.
    clean = img.copy()
    clean.info = {}
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def image_content_hash(data: bytes) -> str:
    """SHA-256 hex of the raw bytes, for cache keys."""
    return hashlib.sha256(data).hexdigest()
