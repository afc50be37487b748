"""longcat.images: untrusted bytes in, clean RGB out. Every image here is really encoded by PIL."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from longcat.errors import InvalidImage, NotFound
from longcat.images import (
    DEFAULT_MAX_INPUT_PIXELS,
    decode_image,
    encode_png,
    image_content_hash,
    load_image_file,
    to_rgb,
)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(size=(64, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


# --- rejected input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", None, bytearray()])
def test_empty_is_rejected(data):
    with pytest.raises(InvalidImage, match="is empty") as exc:
        decode_image(data, field="image")
    assert exc.value.field == "image"


def test_garbage_bytes_are_rejected():
    garbage = random.Random(0).randbytes(4096)
    with pytest.raises(InvalidImage, match="cannot be decoded as PNG, JPEG or WebP"):
        decode_image(garbage)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_fails_at_decode(fmt):
    data = encode(noise((128, 128)), fmt)
    # PIL opens a truncated file fine (the header is intact); only the full load inside decode_image fails.
    Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        decode_image(data[: len(data) // 2])


def test_zero_size_image_is_rejected():
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)  # width 0, height 10, 8-bit RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(InvalidImage) as exc:
        decode_image(png, field="image")
    assert exc.value.field == "image"


def test_other_formats_are_not_tried():
    # A valid image in a format outside the allow-list (here PPM) is refused, not handed to its plugin.
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        decode_image(encode(noise((8, 8)), "PPM"))


def test_field_name_is_in_the_message():
    with pytest.raises(InvalidImage) as exc:
        decode_image(b"not an image", field="reference_image")
    assert exc.value.field == "reference_image"
    assert str(exc.value).startswith("reference_image: cannot be decoded")


# --- size limit ---------------------------------------------------------------------------------------


def test_pixel_limit():
    data = encode(noise((100, 100)), "PNG")
    with pytest.raises(InvalidImage) as exc:
        decode_image(data, field="source", max_pixels=5000)
    message = str(exc.value)
    assert message.startswith("source: ")
    assert "100x100" in message and "5000" in message
    # The limit is inclusive: exactly max_pixels is fine.
    assert decode_image(data, max_pixels=100 * 100).size == (100, 100)


def test_default_limit_is_64_megapixels():
    assert DEFAULT_MAX_INPUT_PIXELS == 64 * 1024 * 1024


def test_pil_decompression_bomb_error_becomes_invalid_image(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 is over twice this: PIL raises
    with pytest.raises(InvalidImage, match="too large") as exc:
        decode_image(encode(noise((100, 100)), "PNG"), field="image")
    assert exc.value.field == "image"


def test_pil_decompression_bomb_warning_as_error_becomes_invalid_image(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 100x100 is over this but under twice: a warning
    data = encode(noise((100, 100)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InvalidImage, match="too large"):
            decode_image(data)


# --- round trips --------------------------------------------------------------------------------------


def test_png_round_trip_is_exact():
    img = noise((33, 17))
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB" and out.size == (33, 17)
    assert np.array_equal(pixels(out), pixels(img))


def test_webp_lossless_round_trip_is_exact():
    img = noise((33, 17))
    out = decode_image(encode(img, "WEBP", lossless=True))
    assert out.mode == "RGB" and out.size == (33, 17)
    assert np.array_equal(pixels(out), pixels(img))


def test_jpeg_round_trip_is_close():
    img = Image.new("RGB", (32, 24), (200, 40, 90))
    out = decode_image(encode(img, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (32, 24)
    assert np.abs(pixels(out).astype(int) - pixels(img).astype(int)).max() <= 4


def test_animated_gif_takes_first_frame():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def test_multi_picture_jpeg_takes_first_picture():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "MPO", save_all=True, append_images=[blue])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    r, g, b = decode_image(data).getpixel((4, 4))
    assert r > 230 and g < 25 and b < 25


def test_load_image_file(tmp_path):
    img = noise((12, 9))
    path = tmp_path / "x.png"
    path.write_bytes(encode(img, "PNG"))
    assert np.array_equal(pixels(load_image_file(path)), pixels(img))
    assert np.array_equal(pixels(load_image_file(str(path))), pixels(img))
    with pytest.raises(InvalidImage) as exc:
        load_image_file(path, field="target", max_pixels=10)
    assert exc.value.field == "target"
    with pytest.raises(NotFound):
        load_image_file(tmp_path / "missing.png")


# --- modes --------------------------------------------------------------------------------------------


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent: its hidden color must not show
    img.putpixel((1, 0), (200, 100, 50, 255))  # opaque: kept as is
    img.putpixel((2, 0), (0, 0, 0, 128))  # half transparent black: mid grey
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (200, 100, 50)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((2, 0)))


def test_la_is_composited_on_white():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (60, 255))
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (60, 60, 60)


def palette_image() -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 - 2) * 3)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    return img


def test_palette_with_transparency_is_composited_on_white():
    data = encode(palette_image(), "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # index 0 is transparent
    assert out.getpixel((1, 0)) == (10, 200, 30)


def test_palette_without_transparency():
    out = decode_image(encode(palette_image(), "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (10, 200, 30)


def test_grayscale_l():
    img = Image.new("L", (2, 2), 77)
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (77, 77, 77)


def test_one_bit():
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    out = decode_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 230 and g < 25 and b < 25


def test_sixteen_bit_png_scales_by_range():
    img = Image.fromarray(np.array([[0, 256, 65535, 0x1234]], dtype=np.uint16))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    assert out.mode == "RGB"
    assert pixels(out)[0, :, 0].tolist() == [0, 1, 255, 0x12]


def test_sixteen_bit_big_endian():
    img = Image.frombytes("I;16B", (3, 1), struct.pack(">HHH", 256, 65535, 0x1234))
    assert pixels(to_rgb(img))[0, :, 0].tolist() == [1, 255, 0x12]


def test_mode_i_is_clipped_to_sixteen_bit_and_scaled():
    img = Image.fromarray(np.array([[-5, 256, 70000, 65535]], dtype=np.int32))
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = decode_image(data)
    assert out.mode == "RGB"
    assert pixels(out)[0, :, 0].tolist() == [0, 1, 255, 255]


def test_mode_f_is_clipped_to_255():
    img = Image.fromarray(np.array([[-5.0, 1.6, 300.0, 128.0, np.nan]], dtype=np.float32))
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = decode_image(data)
    assert out.mode == "RGB"
    assert pixels(out)[0, :, 0].tolist() == [0, 2, 255, 128, 0]  # rounded, not truncated


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "RGBX"])
def test_other_modes_convert_to_rgb(mode):
    img = Image.new("RGB", (4, 4), (200, 30, 40))
    if mode == "LAB":
        from PIL import ImageCms

        srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
        converted = ImageCms.applyTransform(img, ImageCms.buildTransform(srgb, lab, "RGB", "LAB"))
    else:
        converted = img.convert(mode)
    out = to_rgb(converted)
    assert out.mode == "RGB"
    assert np.abs(np.array(out.getpixel((1, 1))) - (200, 30, 40)).max() <= 3


def test_rgb_is_returned_unchanged():
    img = noise((5, 5))
    assert to_rgb(img) is img


# --- EXIF orientation ---------------------------------------------------------------------------------


def test_exif_orientation_6_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = decode_image(buf.getvalue())
    assert out.size == (20, 40)
    # Turned clockwise, the left (red) half ends up on top.
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


# --- encode_png and hashing ---------------------------------------------------------------------------


def test_encode_png_is_deterministic_and_round_trips():
    img = noise((31, 19))
    first, second = encode_png(img), encode_png(noise((31, 19)))
    assert first == second
    assert np.array_equal(pixels(decode_image(first)), pixels(img))


def test_encode_png_drops_metadata():
    img = noise((8, 8))
    tagged = img.copy()
    tagged.info["icc_profile"] = b"not really a profile"
    tagged.info["dpi"] = (300, 300)
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "something")
    with_text = Image.open(io.BytesIO(encode(img, "PNG", pnginfo=text, dpi=(300, 300))))
    assert "Software" in with_text.info
    plain = encode_png(img)
    assert encode_png(tagged) == plain
    assert encode_png(with_text) == plain
    assert png_chunk_types(plain) == [b"IHDR", b"IDAT", b"IEND"]


def test_encode_png_converts_modes_png_cannot_store():
    img = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert decode_image(encode_png(img)).getpixel((0, 0)) == (255, 255, 255)


def test_image_content_hash():
    assert image_content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = encode(noise((4, 4)), "PNG")
    assert image_content_hash(data) == hashlib.sha256(data).hexdigest()
    assert image_content_hash(data) != image_content_hash(data + b"\0")
