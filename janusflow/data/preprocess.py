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
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# PIL's decompression-bomb check (it raises above ~179 MPixel) is kept: such a file is
# counted as a bad image instead of exhausting the host's memory.
_RESAMPLE = Image.Resampling.BICUBIC
MIN_SIDE = 14                                    # official processor's min_size


class BadExample(Exception):
    """An example the pipeline must skip; ``reason`` is the stats counter it increments."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


def decode_image(data, flags: list | None = None) -> np.ndarray:
    """Encoded bytes, a PIL image or an array (H, W), (H, W, 1|3|4) -> uint8 (H, W, 3).

    Raises :class:`BadExample` ('bad_image') for anything unreadable or empty; appends
    'fixed_alpha' / 'fixed_gray' / 'fixed_mode' to ``flags`` for converted images.
    """
    flags = [] if flags is None else flags
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) == 0:
                raise BadExample("bad_image", "empty image bytes")
            img = Image.open(io.BytesIO(bytes(data)))
            img.load()
        elif isinstance(data, Image.Image):
            img = data
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


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
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
    img = _resize(img, nw, nh)
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
