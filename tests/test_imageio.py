"""Metadata goes, orientation is applied, bad bytes get a reason. Images are built here with Pillow."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from anonymizer import imageio


def _jpeg_with_everything(face: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "CameraMaker"
    exif[0xA431] = "SERIAL-12345"  # body serial number
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 3.0)})
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>Jane Doe</dc:creator></x:xmpmeta>'
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    face.save(out, "JPEG", exif=exif, xmp=xmp, comment=b"shot at home", icc_profile=icc, quality=95)
    return out.getvalue()


@pytest.fixture
def face_image(shared):
    from conftest import lfw_images

    return Image.open(lfw_images(1)[0]).convert("RGB")


def test_all_metadata_present_in_input_is_gone_from_output(face_image):
    data = _jpeg_with_everything(face_image)
    found = imageio.metadata_fields(data)
    assert {"exif", "xmp", "icc", "comment"} <= set(found), found
    dec = imageio.decode(data, 10**8)
    out = imageio.encode(dec.rgb, dec)
    assert imageio.metadata_fields(out) == {}
    assert b"SERIAL-12345" not in out and b"Jane Doe" not in out and b"shot at home" not in out


def test_exif_thumbnail_counts_as_metadata(face_image):
    thumb = io.BytesIO()
    face_image.resize((64, 64)).save(thumb, "JPEG")
    exif = Image.Exif()
    exif[0x010F] = "x"
    out = io.BytesIO()
    # Pillow writes IFD1 (the thumbnail) from a raw block: build one with the thumbnail's JPEG appended.
    face_image.save(out, "JPEG", exif=exif.tobytes() + thumb.getvalue())
    data = out.getvalue()
    assert thumb.getvalue()[:200] in data and imageio.metadata_fields(data)
    dec = imageio.decode(data, 10**8)
    clean = imageio.encode(dec.rgb, dec)
    assert thumb.getvalue()[:200] not in clean and imageio.metadata_fields(clean) == {}


@pytest.mark.parametrize("orientation,transpose", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270),
                                                   (8, Image.Transpose.ROTATE_90)])
def test_orientation_is_applied_to_pixels(face_image, orientation, transpose):
    img = face_image.crop((0, 0, 250, 180))
    data = _jpeg_with_everything(img, orientation)
    dec = imageio.decode(data, 10**8)
    upright = np.asarray(img.transpose(transpose), dtype=np.int16)
    assert dec.rgb.shape == upright.shape
    assert np.abs(dec.rgb.astype(np.int16) - upright).mean() < 4
    assert imageio.probe(data, 10**8)[1:] == (upright.shape[1], upright.shape[0])


def test_formats_keep_format_size_and_alpha(face_image):
    rgba = face_image.convert("RGBA")
    rgba.putalpha(128)
    for fmt, img in [("PNG", rgba), ("WEBP", face_image), ("BMP", face_image), ("TIFF", face_image),
                     ("PNG", face_image.convert("L"))]:
        buf = io.BytesIO()
        text = PngImagePlugin.PngInfo()
        text.add_text("Author", "Jane Doe")
        img.save(buf, fmt, **({"pnginfo": text} if fmt == "PNG" else {}))
        dec = imageio.decode(buf.getvalue(), 10**8)
        out = imageio.encode(dec.rgb, dec)
        back = Image.open(io.BytesIO(out))
        assert (back.format, back.size, back.mode) == (fmt, img.size, img.mode)
        assert imageio.metadata_fields(out) == {}, fmt


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"\x00garbage bytes that are not an image" * 10, "not an image"),
])
def test_bad_bytes_get_a_reason(data, reason):
    with pytest.raises(imageio.ImageError, match=reason):
        imageio.decode(data, 10**8)


def test_truncated_jpeg_is_refused(face_image):
    buf = io.BytesIO()
    face_image.save(buf, "JPEG")
    with pytest.raises(imageio.ImageError, match="corrupt or truncated"):
        imageio.decode(buf.getvalue()[: len(buf.getvalue()) // 2], 10**8)


def test_pixel_limit_refuses_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, "PNG")
    with pytest.raises(imageio.ImageError, match="exceeds the limit"):
        imageio.decode(buf.getvalue(), 10_000_000)
