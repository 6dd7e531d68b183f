"""Decode images upright and bounded; encode them with no metadata at all; count metadata left.

The output carries pixels only: no EXIF (GPS, serials, the embedded thumbnail that still shows the
original face), XMP, IPTC, ICC or comments. The EXIF orientation is applied to the pixels first, so the
released image looks the same as the original did.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extension → the format it must hold. Anything else is skipped at listing time, with that reason.
EXTENSIONS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}

# TIFF tags that describe the pixel layout itself: not metadata.
_TIFF_STRUCTURAL = {254, 256, 257, 258, 259, 262, 273, 277, 278, 279, 280, 281, 282, 283, 284, 296, 317, 320, 338, 339}
# Info keys Pillow derives from the pixel encoding itself.
_STRUCTURAL_INFO = {
    "dpi", "jfif", "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform", "progressive",
    "progression", "gamma", "transparency", "compression", "interlace", "aspect", "lossless", "loop",
    "duration", "background", "srgb", "resolution", "resolution_unit", "sizes", "bbox", "mode",
}


class ImageError(ValueError):
    """The object cannot be processed; the message is the reason recorded in quarantine."""


@dataclass
class Decoded:
    rgb: np.ndarray          # H×W×3 uint8, upright
    alpha: np.ndarray | None  # H×W uint8, when the input had transparency
    format: str              # JPEG, PNG, WEBP, BMP, TIFF
    mode: str                # the input's Pillow mode
    grayscale: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def probe(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Format and upright size from the header alone, refusing bombs before any pixel is decoded."""
    img = _open(data, max_pixels)
    w, h = img.size
    if img.getexif().get(0x0112) in (5, 6, 7, 8):
        w, h = h, w
    return img.format, w, h


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image: no known image format in its bytes") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the object
        raise ImageError(f"unreadable image header: {exc}") from None
    if img.format not in MIME:
        raise ImageError(f"unsupported format {img.format}")
    if img.width * img.height > max_pixels:
        raise ImageError(f"refused: {img.width}×{img.height} = {img.width * img.height} pixels exceeds the limit of {max_pixels}")
    if getattr(img, "n_frames", 1) > 1:
        raise ImageError(f"animated/multi-frame {img.format} ({img.n_frames} frames) is not supported")
    return img


def decode(data: bytes, max_pixels: int) -> Decoded:
    img = _open(data, max_pixels)
    fmt, mode = img.format, img.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(f"corrupt or truncated {fmt} data: {exc}") from None
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        alpha = np.asarray(img)[:, :, 3].copy()
    grayscale = img.mode in ("1", "L", "LA", "I", "I;16", "F")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        raise ImageError(f"{mode} ({fmt}) high-bit-depth images are not supported yet")
    rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
    return Decoded(rgb, alpha, fmt, mode, grayscale)


def encode(rgb: np.ndarray, like: Decoded, jpeg_quality: int = 95, webp_quality: int = 95) -> bytes:
    """Encode in the input's format and size, from a fresh image object: no metadata can ride along."""
    img = Image.fromarray(rgb, "RGB")
    if like.grayscale and like.alpha is None:
        img = img.convert("L")
    if like.alpha is not None and like.format != "JPEG":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(like.alpha, "L"))
    out = io.BytesIO()
    if like.format == "JPEG":
        img.save(out, "JPEG", quality=jpeg_quality, subsampling=0 if jpeg_quality >= 90 else 2)
    elif like.format == "WEBP":
        img.save(out, "WEBP", quality=webp_quality, method=4)
    elif like.format == "TIFF":
        img.save(out, "TIFF", compression="tiff_deflate")
    else:
        img.save(out, like.format)
    return out.getvalue()


def metadata_fields(data: bytes) -> dict[str, int]:
    """Metadata fields present in an encoded image, by kind. Zero everywhere is what a release needs."""
    img = Image.open(io.BytesIO(data))
    found: dict[str, int] = {}
    exif = img.getexif()
    tags = [t for t in exif if not (img.format == "TIFF" and t in _TIFF_STRUCTURAL)]
    for ifd in (0x8769, 0x8825, 0xA005):  # Exif, GPS, Interop sub-IFDs
        tags += list(exif.get_ifd(ifd))
    if tags:
        found["exif"] = len(tags)
    if img.format == "JPEG":
        for marker, payload in getattr(img, "applist", []):
            kind = {"APP1": "xmp" if payload.startswith(b"http://ns.adobe.com/xap") else "exif_block",
                    "APP13": "iptc", "APP2": "icc"}.get(marker)
            if kind == "exif_block" and "exif" in found:
                continue
            if kind:
                found[kind] = found.get(kind, 0) + 1
        if "comment" in img.info:
            found["comment"] = 1
    for key in img.info:
        if key in _STRUCTURAL_INFO or key in ("exif", "comment"):
            continue
        name = {"icc_profile": "icc", "xmp": "xmp", "XML:com.adobe.xmp": "xmp", "photoshop": "iptc"}.get(key, f"text:{key}")
        if img.format == "JPEG" and name in found:
            continue
        found[name] = found.get(name, 0) + 1
    if img.format == "JPEG" and "exif" not in found and "exif" in img.info:
        found["exif"] = 1  # an EXIF block with no readable tags (e.g. a thumbnail only) still counts
    return found
