"""Decode images upright and bounded; encode them with no metadata at all; count metadata left.

The output carries pixels only: no EXIF (GPS, serials, the embedded thumbnail that still shows the
original face), XMP, IPTC, ICC or comments. The EXIF orientation is applied to the pixels first, so the
released image looks the same as the original did.
"""

from __future__ import annotations

import io
import posixpath
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extension → the format it must hold. Anything else is skipped at listing time, with that reason.
EXTENSIONS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".avif": "AVIF",
}
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff",
        "AVIF": "image/avif"}
# Image types met in the wild that are refused on purpose, with the reason recorded for each.
UNSUPPORTED = {
    ".heic": "HEIC/HEIF is not supported: decoding it needs libheif (pillow-heif's wheels bundle the GPL x265 "
             "encoder); convert it to JPEG or AVIF first",
    ".gif": "GIF is not supported: 256-colour palettes cannot hold an anonymized face without changing the "
            "rest of the image, and GIFs are often animated; convert it to PNG first",
    ".svg": "SVG is not supported: a vector document, not pixels (it can reference other files)",
    ".pdf": "PDF is not supported: a document, not an image",
}
UNSUPPORTED[".heif"] = UNSUPPORTED[".heic"]
# A camera JPEG carrying extra pictures (MPF: previews, depth maps) opens as MPO: the first picture is the
# photo; the others are dropped with the rest of the metadata.
_ALIASES = {"MPO": "JPEG"}
# Magic numbers of formats Pillow does not open, for a specific reason instead of "not an image".
_MAGIC = [
    (lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"),
     "content is HEIC/HEIF: " + UNSUPPORTED[".heic"].split(": ", 1)[1]),
    (lambda d: d.startswith(b"%PDF"), "content is a PDF document, not an image"),
    (lambda d: d.lstrip()[:5] in (b"<?xml", b"<svg ") or b"<svg" in d[:512], "content is SVG/XML, not pixels"),
    (lambda d: d.startswith(b"PK\x03\x04"), "content is a ZIP archive, not an image"),
]

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
    rgb: np.ndarray          # H×W×3 uint8, upright; 0 wherever alpha is 0 (no visible colour there)
    alpha: np.ndarray | None  # H×W uint8, when the input had transparency
    format: str              # JPEG, PNG, WEBP, BMP, TIFF, AVIF
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
    return format_of(img), w, h


def format_of(img: Image.Image) -> str:
    return _ALIASES.get(img.format, img.format)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (> 89 MP) is superseded by the policy's limit, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        for match, reason in _MAGIC:
            if match(data[:1024]):
                raise ImageError(reason) from None
        raise ImageError("not an image: no known image format in its bytes") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused (decompression bomb): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the object
        raise ImageError(f"unreadable image header: {exc}") from None
    fmt = format_of(img)
    if fmt not in MIME:
        hint = next((r for e, r in UNSUPPORTED.items() if e[1:].upper() == fmt), None)
        raise ImageError(f"unsupported format {fmt}" + (f": {hint}" if hint else ""))
    if img.width * img.height > max_pixels:
        raise ImageError(f"refused: {img.width}×{img.height} = {img.width * img.height} pixels exceeds the limit of "
                         f"{max_pixels} (checked from the header, before decoding)")
    if getattr(img, "n_frames", 1) > 1 and img.format not in _ALIASES:
        raise ImageError(f"animated/multi-frame {fmt} ({img.n_frames} frames) is not supported: one frame "
                         "cannot stand for the others")
    return img


def check_extension(key: str, data: bytes, max_pixels: int) -> str:
    """The format the bytes hold, which must be the one the key's extension names (a lying name is refused:
    the release would carry the lie, and polyglot files hide behind one)."""
    fmt = format_of(_open(data, max_pixels))
    ext = posixpath.splitext(key)[1].lower()
    named = EXTENSIONS.get(ext)
    if named != fmt:
        raise ImageError(f"extension lies about the format: the name says {named or ext} ({ext}) but the content is "
                         f"{fmt}; rename it to match its content")
    return fmt


def decode(data: bytes, max_pixels: int) -> Decoded:
    img = _open(data, max_pixels)
    fmt, mode = format_of(img), img.mode
    if mode in ("I", "F"):
        raise ImageError(f"{mode} ({fmt}): 32-bit integer/float pixels have no defined 8-bit display range; "
                         "convert them to 8 or 16 bits per channel first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the policy's limit was checked
            img.load()
            img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(f"corrupt or truncated {fmt} data: {exc}") from None
    if img.mode.startswith("I;16"):
        # 16-bit grayscale (PNG, TIFF): released as 8-bit, the top 8 bits of each sample. (Pillow already
        # reads 16-bit RGB(A) PNGs as 8-bit RGB(A).)
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), "L")
    img = _to_srgb(img)
    alpha = None
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        alpha = np.asarray(img)[:, :, 3].copy()
    grayscale = img.mode in ("1", "L", "LA", "La")
    try:
        rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
    except ValueError as exc:  # e.g. LAB: no conversion to RGB in Pillow
        raise ImageError(f"colour mode {mode} ({fmt}) cannot be converted to RGB: {exc}") from None
    if alpha is not None and not alpha.all():
        # Fully transparent pixels show nothing: their colour is set to 0, so that what is hidden there never
        # travels and a lossy codec's changes there (WebP rewrites it) are not counted as changed pixels.
        rgb = rgb.copy()
        rgb[alpha == 0] = 0
    return Decoded(rgb, alpha, fmt, mode, grayscale)


def _to_srgb(img: Image.Image) -> Image.Image:
    """Pixels in an embedded colour space (Adobe RGB, Display P3, a CMYK press profile) converted to sRGB,
    since the profile itself is metadata and does not travel with the output."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if img.mode == "L":
            return img  # a gray profile changes the tone curve only: kept as is
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except Exception:  # noqa: BLE001 - a broken profile: the pixels are used as they are
        return img


def encode(rgb: np.ndarray, like: Decoded, jpeg_quality: int = 95, webp_quality: int = 95,
           avif_quality: int = 90) -> bytes:
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
    elif like.format == "AVIF":
        img.save(out, "AVIF", quality=avif_quality, speed=8)
    else:
        img.save(out, like.format)
    return out.getvalue()


def metadata_fields(data: bytes) -> dict[str, int]:
    """Metadata fields present in an encoded image, by kind. Zero everywhere is what a release needs."""
    img = Image.open(io.BytesIO(data))
    fmt = format_of(img)
    found: dict[str, int] = {}
    exif = img.getexif()
    tags = [t for t in exif if not (fmt == "TIFF" and t in _TIFF_STRUCTURAL)]
    for ifd in (0x8769, 0x8825, 0xA005):  # Exif, GPS, Interop sub-IFDs
        tags += list(exif.get_ifd(ifd))
    if tags:
        found["exif"] = len(tags)
    if fmt == "JPEG":
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
        if fmt == "JPEG" and name in found:
            continue
        found[name] = found.get(name, 0) + 1
    if fmt == "JPEG" and "exif" not in found and "exif" in img.info:
        found["exif"] = 1  # an EXIF block with no readable tags (e.g. a thumbnail only) still counts
    return found
