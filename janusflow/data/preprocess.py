"""Image preprocessing as in the paper / official processor, on the host with PIL + numpy.

- generation: short side resized to the model resolution, then a random square crop;
- understanding: long side resized to the encoder resolution (official ``VLMImageProcessor``:
  ``int(side / long * S)``, at least 14 px, bicubic), then centred padding to a square with the
  encoder's mean colour ``int(mean * 255)``;
- SigLIP input: ``(x / 255 - mean) / std`` (``janusflow.models.siglip.normalize`` semantics);
- VAE input: ``x / 127.5 - 1`` in [-1, 1].

Bad images never raise out of :func:`decode_image` except as :class:`BadExample`, which the
pipeline counts and skips; fixable ones (alpha, one channel, palette, CMYK, 16-bit) are
converted to RGB and reported through the returned flags.

Every image we decode from a user's file goes through :func:`open_image`, which checks the
size in the header against :data:`MAX_PIXELS` *before* decoding: a 13000 x 13000 PNG is
490 KB on disk and 1.7 GB once decoded, under Pillow's own bomb limit (179 MPixel).
"""

from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
from PIL import Image

# Decoded pixels allowed per image (8192 x 8192: 200 MB as RGB). Pillow's own bomb check
# raises only above ~179 MPixel, which is 0.5-2 GB per image and per decoding thread.
MAX_PIXELS = 2**26
# Our cap is the stricter check, so Pillow's warning (from 89 MPixel) only repeats it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_BYTES_PER_PIXEL = 8                             # uncompressed 16-bit RGBA: the most any format needs
_RESAMPLE = Image.Resampling.BICUBIC
MIN_SIDE = 14                                    # official processor's min_size


class BadExample(Exception):
    """An example the pipeline must skip; ``reason`` is the stats counter it increments."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail or reason


def _to_rgb(img: Image.Image, flags: list) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels usually mean "no content": composite on white, not on black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flags.append("fixed_alpha")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        flags.append("fixed_gray")
        if img.mode.startswith("I") or img.mode == "F":
            a = np.asarray(img, np.float64)
            hi = 65535.0 if a.max() > 255 else 255.0
            img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        return img.convert("RGB")
    flags.append("fixed_mode")
    return img.convert("RGB")


def _check_pixels(size, max_pixels: int, what: str = "image"):
    w, h = size
    if w * h > max_pixels:
        raise BadExample("too_large", f"{what} is {w} x {h} = {w * h / 1e6:.0f} MPixel, over the cap "
                         f"of {max_pixels / 1e6:.0f} MPixel")


def _plan_decode(img: Image.Image, flags: list, max_pixels: int, short_side: int):
    """Before any pixel is decoded: a JPEG whose short side exceeds ``short_side`` is set to
    decode at 1/2, 1/4 or 1/8 scale that still covers it (Pillow's ``draft``), then the size
    to decode is checked against the cap."""
    w, h = img.size
    if short_side and img.format == "JPEG" and min(w, h) > short_side:
        s = short_side / min(w, h)
        img.draft(None, (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))
        if img.size != (w, h):
            flags.append("reduced")
    _check_pixels(img.size, max_pixels)


def _opened(source, flags, max_pixels, short_side) -> Image.Image:
    try:
        img = Image.open(source)
        _plan_decode(img, flags, max_pixels, short_side)
        return img
    except BadExample:
        raise
    except Image.DecompressionBombError as e:
        raise BadExample("too_large", str(e)) from None
    except Exception as e:  # PIL raises many types for corrupt or truncated files
        raise BadExample("bad_image", f"{type(e).__name__}: {e}") from None


def open_image(data, flags: list | None = None, *, max_pixels: int = MAX_PIXELS,
               short_side: int = 0) -> Image.Image:
    """Encoded image bytes -> a decoded PIL image, its header size checked against
    ``max_pixels`` before any pixel is decoded.

    ``short_side``: the caller keeps only a short side this long, so a larger JPEG is decoded
    at a reduced scale (less memory and time; 'reduced' is appended to ``flags``) and the cap
    applies to that scale. Raises :class:`BadExample` 'too_large' over the cap, 'bad_image'
    for anything unreadable.
    """
    flags = [] if flags is None else flags
    if len(data) == 0:
        raise BadExample("bad_image", "empty image bytes")
    img = _opened(io.BytesIO(bytes(data)), flags, max_pixels, short_side)
    try:
        img.load()
    except Exception as e:
        raise BadExample("bad_image", f"{type(e).__name__}: {e}") from None
    return img


def read_image_file(path: str, *, max_pixels: int = MAX_PIXELS, short_side: int = 0) -> bytes:
    """The bytes of an image file, after its header passed the pixel cap (as
    :func:`open_image` would decode it) and its size the byte bound an image under the cap can
    have (so a huge file is never read whole). OSError (missing, unreadable) passes through."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_pixels * _BYTES_PER_PIXEL + 2**20:
            raise BadExample("too_large", f"file is {size / 1e6:.0f} MB, more than an image under "
                             f"the cap of {max_pixels / 1e6:.0f} MPixel can take")
        _opened(fh, [], max_pixels, short_side)
        fh.seek(0)
        return fh.read()


def decode_image(data, flags: list | None = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes, a PIL image or an array (H, W), (H, W, 1|3|4) -> uint8 (H, W, 3).

    Raises :class:`BadExample` ('bad_image') for anything unreadable or empty, 'too_large'
    for bytes or an image over ``max_pixels`` (checked before decoding); appends
    'fixed_alpha' / 'fixed_gray' / 'fixed_mode' to ``flags`` for converted images.
    """
    flags = [] if flags is None else flags
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            img = open_image(data, flags, max_pixels=max_pixels)
        elif isinstance(data, Image.Image):
            img = data
            _check_pixels(img.size, max_pixels)
        else:
            a = np.asarray(data)
            if a.ndim == 3 and a.shape[-1] == 1:
                a = a[..., 0]
            if a.ndim == 2:
                flags.append("fixed_gray")
                a = np.repeat(a[..., None], 3, axis=-1)
            if a.ndim != 3 or a.shape[-1] not in (3, 4):
                raise BadExample("bad_image", f"array of shape {a.shape}")
            if a.dtype != np.uint8:
                a = np.clip(a, 0, 255).astype(np.uint8)
            img = Image.fromarray(a, "RGBA" if a.shape[-1] == 4 else "RGB")
        img = _to_rgb(img, flags)
        out = np.asarray(img, np.uint8)
    except BadExample:
        raise
    except Exception as e:  # PIL raises many types for corrupt or truncated files
        raise BadExample("bad_image", f"{type(e).__name__}: {e}") from None
    if out.ndim != 3 or out.shape[0] < 1 or out.shape[1] < 1:
        raise BadExample("bad_image", f"decoded to shape {out.shape}")
    return out


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``img`` resampled to w x h (the shared filter); unchanged when already that size."""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), _RESAMPLE))


def resize_short_side_random_crop(img: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Generation images: short side -> ``size`` (bicubic), then a ``size`` square crop at a
    random offset (centred when ``rng`` is None). Only the crop window is resampled (PIL's
    ``box``), which equals resize-then-crop but skips the pixels the crop would discard."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if rng is None:
        x, y = (nw - size) // 2, (nh - size) // 2
    else:
        x, y = int(rng.integers(0, nw - size + 1)), int(rng.integers(0, nh - size + 1))
    if nw == w and nh == h:
        return np.ascontiguousarray(img[y:y + size, x:x + size])
    sx, sy = w / nw, h / nh
    box = (x * sx, y * sy, (x + size) * sx, (y + size) * sy)
    return np.asarray(Image.fromarray(img).resize((size, size), _RESAMPLE, box=box))


def mean_color(pixel_mean) -> tuple:
    """The official padding colour: ``int(mean * 255)`` per channel (127 for SigLIP's 0.5)."""
    return tuple(int(m * 255) for m in pixel_mean)


def resize_long_side_pad(img: np.ndarray, size: int, fill) -> np.ndarray:
    """Understanding images: long side -> ``size`` (official rounding), centred square padding
    with ``fill`` (the encoder's mean colour)."""
    h, w = img.shape[:2]
    long = max(h, w)
    min_side = min(MIN_SIDE, size)
    nh, nw = max(int(h / long * size), min_side), max(int(w / long * size), min_side)
    img = resize(img, nw, nh)
    if nh == nw == size:
        return img
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = img
    return out


def to_siglip(img: np.ndarray, pixel_mean, pixel_std) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 ``(x/255 - mean) / std``, as one affine map per channel."""
    mean, std = np.asarray(pixel_mean, np.float64), np.asarray(pixel_std, np.float64)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    if np.all(scale == scale[0]) and np.all(shift == shift[0]):
        # Same map on every channel (SigLIP's 0.5/0.5): scalar ops, much faster than a
        # broadcast over a trailing axis of 3.
        out = img.astype(np.float32)
        out *= np.float32(scale[0])
        out += np.float32(shift[0])
        return out
    lut = (np.arange(256)[:, None] * scale + shift).astype(np.float32)      # (256, 3)
    out = np.empty(img.shape, np.float32)
    for c in range(3):
        out[..., c] = lut[img[..., c], c]
    return out


def to_vae(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 in [-1, 1]."""
    return img.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
