"""Saving images the way AUTOMATIC1111 lays them out: `outputs/txt2img-images/2026-11-22/00042-1234.png`.

The folder and file names follow A1111's patterns (`directories_filename_pattern`,
`samples_filename_pattern`, see modules/filenames.py). The number is one more than the largest number
already in the folder, so it continues across runs. Files are written to a temporary name and renamed
into place, so a crash never leaves half an image; an existing file is only replaced when numbering is
off and `save_images_replace_action` says Replace (as in A1111).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import os
import re
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError, features
from PIL.PngImagePlugin import PngInfo

from modules import fileio
from modules.filenames import FileNamer
from modules.limits import Limits, megapixels
from modules.settings import Settings

log = logging.getLogger(__name__)
_save_lock = threading.Lock()
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
# Largest side each format can store; a bigger image is saved as PNG instead (A1111 does the same).
_MAX_SIDE = {"JPEG": 65535, "WEBP": 16383}


def next_number(folder: Path, basename: str = "") -> int:
    """A1111's next sequence number: one more than the largest number that starts a file name in the folder
    (after `basename-` when there is a basename), up to the first `-` or the extension; 0 when none."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            if name.startswith(prefix):
                first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
                if first.isascii() and first.isdigit():
                    highest = max(highest, int(first))
    return highest + 1


def png_bytes(image: Image.Image, infotext: str | None, texts: dict[str, str] | None = None,
              section: str = "parameters") -> bytes:
    """PNG with `infotext` in the text chunk `section` (A1111: `parameters`; Extras write `extras`) and any
    other `texts` (e.g. an original image's `parameters` kept by Extras)."""
    chunks = {**(texts or {}), **({section: infotext} if infotext else {})}
    info = None
    if chunks:
        info = PngInfo()
        for key, value in chunks.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def exif_bytes(infotext: str) -> bytes:
    """EXIF holding `infotext` as its UserComment the way A1111 writes it (piexif's
    `UserComment.dump(text, encoding="unicode")`): a big-endian TIFF whose first IFD points to the Exif IFD,
    which holds UserComment as UNDEFINED bytes: the code `UNICODE\\0`, then UTF-16 big-endian.
    Packed here because Pillow's Image.Exif stores bytes as type BYTE, which A1111's reader (piexif) rejects."""
    comment = b"UNICODE\0" + infotext.encode("utf-16-be")
    entry = struct.Struct(">HHHLL L")  # entry count, (tag, type, count, value or offset), next-IFD offset
    ifd0 = entry.pack(1, _EXIF_IFD, 4, 1, 8 + entry.size, 0)  # type 4: LONG
    exif_ifd = entry.pack(1, _USER_COMMENT, 7, len(comment), 8 + 2 * entry.size, 0)  # type 7: UNDEFINED
    return b"Exif\0\0MM\0\x2a" + struct.pack(">L", 8) + ifd0 + exif_ifd + comment


def file_format(image: Image.Image, extension: str) -> tuple[str, str]:
    """(Pillow format, file extension) to save `image` as, given a `samples_format`: PNG instead when the
    format cannot hold an image this size or this Pillow cannot write it."""
    fmt = Image.registered_extensions().get(f".{extension.lower()}")
    if fmt is None or (fmt == "AVIF" and not features.check("avif")):
        log.warning("Cannot save .%s files here; saving as PNG", extension)
        return "PNG", "png"
    if max(image.size) > _MAX_SIDE.get(fmt, 1 << 30):
        log.warning("Image of %dx%d is too large for %s; saving as PNG", *image.size, fmt)
        return "PNG", "png"
    return fmt, extension.lower()


def pixels_md5(image: Image.Image) -> str:
    """A1111's init image hash: the MD5 of the image's pixel bytes (as PIL holds them), in hex."""
    return hashlib.md5(image.tobytes()).hexdigest()


def encode(image: Image.Image, fmt: str, infotext: str | None, quality: int = 80, lossless: bool = False,
           texts: dict[str, str] | None = None, section: str = "parameters") -> bytes:
    """The file's bytes: PNG with the infotext in a text chunk (see png_bytes), other formats with the
    infotext in EXIF (and without `texts`, as A1111 writes them)."""
    if fmt == "PNG":
        return png_bytes(image, infotext, texts, section)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha
    elif fmt != "JPEG" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    extra = {"exif": exif_bytes(infotext)} if infotext else {}
    if fmt == "WEBP":
        extra["lossless"] = lossless
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=quality, **extra)
    return buf.getvalue()


def _subfolder(name: str) -> Path:
    """A folder name from `directories_filename_pattern`: `/` nests folders, but never leaves the output
    folder (empty, `.` and `..` parts are dropped, and `:` is replaced: on Windows `C:` would name a drive)."""
    parts = [p.strip(" ").replace(":", "_") for p in name.replace("\\", "/").split("/")]
    return Path(*[p for p in parts if p not in ("", ".", "..")])


def _clip(stem: str, folder: Path, suffix: str) -> str:
    """`stem` cut so that stem + suffix fits the file system's longest name (counted in bytes)."""
    try:
        limit = os.statvfs(folder).f_namemax
    except (AttributeError, OSError):
        limit = 255
    room = limit - max(4, len(suffix.encode()))
    return stem.encode()[:room].decode(errors="ignore")


def save_image(image: Image.Image, folder: Path, infotext: str | None, settings: Settings, namer: FileNamer,
               seed: int | None = None, index: int = 0, grid: bool = False, *, to_dirs: bool = True,
               texts: dict[str, str] | None = None, section: str = "parameters", basename: str = "",
               suffix: str = "") -> Path:
    """Save an image of a job (or, with `grid`, its grid) in `folder` or the subfolder the directory pattern
    names, as A1111 names it: `00042-SEED.png`, `grid-0007.png`, or what `samples_filename_pattern` says.
    The infotext goes into the file (`enable_pnginfo`) and a .txt beside it (`save_txt`); a large image also
    gets a JPG copy beside it (see `jpeg_of_large`). Returns the path.
    Extras use A1111's short form: no `seed` (just the number), `to_dirs` False (no subfolder), the
    infotext in the PNG chunk `section` beside the original's `texts`. `basename` names a script's grid
    (xyz_grid-0001.png); `suffix` ends the name as A1111's does (an inpainting mask: 00043-SEED-mask.png)."""
    fmt, ext = file_format(image, settings.grid_format if grid else settings.samples_format)
    basename = basename or ("grid" if grid else "")
    if to_dirs and (settings.grid_save_to_dirs if grid else settings.save_to_dirs):
        pattern = settings.directories_filename_pattern or "[prompt_words]"
        folder = folder / _subfolder(namer.expand(pattern, image, seed, index, basename))
    if grid and not settings.grid_extended_filename or seed is None:
        decoration = ""
    else:
        pattern = settings.samples_filename_pattern or ("[seed]" if settings.save_to_dirs else "[seed]-[prompt_spaces]")
        decoration = namer.expand(pattern, image, seed, index, basename)
        decoration = decoration.replace("/", "_").replace("\\", "_").replace(":", "_")  # (C: is a drive on Windows)
    numbered = settings.save_images_add_number or decoration == ""
    data = encode(image, fmt, infotext if settings.enable_pnginfo else None, settings.jpeg_quality,
                  settings.webp_lossless, texts if settings.enable_pnginfo else None, section)
    large = None
    if fmt != "JPEG":  # made before the lock: a large picture's resize and encode take a while
        try:
            large = jpeg_of_large(image, len(data), settings, infotext)
        except Exception as e:  # noqa: BLE001  (the copy is extra: the image itself is still saved)
            log.warning("Could not make the JPG copy of a large image: %s", e)
    with _save_lock:
        folder.mkdir(parents=True, exist_ok=True)
        # the suffix stays whole when a long name is cut to fit (it goes with the extension)
        path = _free_path(folder, basename, decoration, f"{suffix}.{ext}", numbered,
                          settings.save_images_replace_action)
        fileio.atomic_write_bytes(path, data)
        copy = path.with_suffix(".jpg")
        if large is not None and (settings.save_images_replace_action == "Replace" or not copy.exists()):
            try:
                fileio.atomic_write_bytes(copy, large)
            except OSError as e:
                log.warning("Could not save the JPG copy %s: %s", copy.name, e)
        elif large is not None:
            log.warning("Not saving the JPG copy of %s: %s exists", path.name, copy.name)
        if settings.save_txt and infotext is not None:
            fileio.atomic_write_bytes(path.with_suffix(".txt"), f"{infotext}\n".encode("utf-8"))
    return path


def jpeg_of_large(image: Image.Image, saved_bytes: int, settings: Settings, infotext: str | None) -> bytes | None:
    """A1111's export_for_4chan: a JPG copy of an image whose file took more than img_downscale_threshold MB or
    whose side is longer than target_side_length pixels, downscaled (Lanczos) so that its longer side is that
    long; with the infotext in EXIF. None when the image is not large, the setting is off, or its pixels are not
    8-bit (a 16-bit picture would be clipped; A1111 fails on it and writes no copy)."""
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA"):
        return None
    side = settings.target_side_length
    oversize = image.width > side or image.height > side
    if not settings.export_for_4chan or not (oversize or saved_bytes > settings.img_downscale_threshold * 1024 ** 2):
        return None
    if oversize:
        size = (side, max(1, round(image.height * side / image.width))) if image.width > image.height else \
            (max(1, round(image.width * side / image.height)), side)
        image = image.resize(size, Image.Resampling.LANCZOS)
    return encode(image, "JPEG", infotext if settings.enable_pnginfo else None, settings.jpeg_quality)


def _free_path(folder: Path, basename: str, decoration: str, suffix: str, numbered: bool, replace_action: str
               ) -> Path:
    if not numbered:
        stem = _clip(decoration, folder, suffix)
        path, n = folder / f"{stem}{suffix}", 0
        while replace_action != "Replace" and path.exists():
            n += 1
            path = folder / f"{_clip(decoration, folder, f'-{n}{suffix}')}-{n}{suffix}"
        return path
    number = next_number(folder, basename)
    for i in range(500):
        prefix = f"{basename}-{number + i:04d}" if basename else f"{number + i:05d}"
        path = folder / f"{_clip(prefix + ('-' + decoration if decoration else ''), folder, suffix)}{suffix}"
        if not path.exists():
            return path
    raise OSError(f"could not find a free file name in {folder}")


def image_grid(images: list[Image.Image], batch_size: int, n_rows: int = -1) -> Image.Image:
    """A1111's grid: `n_rows` rows (0: one row per batch, -1: about square, round(sqrt(n))), filled row by
    row on black."""
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    else:
        rows = min(round(len(images) ** 0.5), len(images))
    cols = -(-len(images) // rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), color="black")
    for i, image in enumerate(images):
        grid.paste(image, box=(i % cols * w, i // cols * h))
    return grid


Annotation = tuple[str, bool]  # a label of a grid's row or column, and whether it is shown as active (A1111's
#                               GridAnnotation: an inactive one, e.g. a prompt matrix part left out, is grey and struck)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """`text` in lines no wider than `width` pixels (broken at spaces; a word longer than that stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def draw_grid_annotations(grid: Image.Image, width: int, height: int, hor_texts: list[list[Annotation]],
                          ver_texts: list[list[Annotation]], margin: int = 0) -> Image.Image:
    """A1111's legend around a grid of `width` x `height` cells: each column's labels above it, each row's to
    its left (a band of 3/4 of a cell's width), black on white; `margin` pixels between the cells. The font
    size follows the cells' size, as A1111's does."""
    cols, rows = grid.width // width, grid.height // height
    font_size = max(8, (width + height) // 25)
    font = _font(font_size)
    line_spacing = font_size // 2
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def lines_of(texts: list[Annotation], box: int) -> list[tuple[str, bool]]:
        return [(line, active) for text, active in texts for line in _wrap(probe, text, font, box)]

    hor = [lines_of(t, width) for t in hor_texts]
    ver = [lines_of(t, width * 3 // 4) for t in ver_texts]
    line_height = font_size + line_spacing
    pad_top = 0 if not any(t for t, _ in sum(hor, [])) else max(len(h) for h in hor) * line_height + line_spacing * 2
    pad_left = 0 if not any(t for t, _ in sum(ver, [])) else width * 3 // 4
    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1),
                               grid.height + pad_top + margin * (rows - 1)), "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(result)

    def draw_lines(lines: list[tuple[str, bool]], cx: float, cy: float) -> None:
        y = cy - len(lines) * line_height / 2 + line_spacing / 2
        for line, active in lines:
            color = (0, 0, 0) if active else (153, 153, 153)
            draw.text((cx, y + font_size / 2), line, font=font, fill=color, anchor="mm")
            if not active:
                w = draw.textlength(line, font=font)
                draw.line((cx - w / 2, y + font_size / 2, cx + w / 2, y + font_size / 2), fill=color,
                          width=max(1, font_size // 12))
            y += line_height

    for col in range(min(cols, len(hor))):
        draw_lines(hor[col], pad_left + (width + margin) * col + width / 2, pad_top / 2)
    for row in range(min(rows, len(ver))):
        draw_lines(ver[row], pad_left / 2, pad_top + (height + margin) * row + height / 2)
    return result


def read_infotext(image: Image.Image) -> str | None:
    """The `parameters` text stored in a PNG by us or by A1111, if any."""
    text = image.info.get("parameters")
    return text if isinstance(text, str) else None


# Image metadata that is not worth showing as text (A1111's png-info leaves the same keys out).
_UNSHOWN_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                 "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
                 "photoshop", "parameters"}


def _user_comment(raw: bytes | str) -> str | None:
    """An EXIF UserComment: 8 bytes naming the encoding, then the text (A1111 writes JPEG/WebP infotext here)."""
    if isinstance(raw, str):
        return raw
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        # UTF-16, big-endian by the EXIF standard; an ASCII first character shows which byte order it is.
        little = len(body) >= 2 and body[0] != 0 and body[1] == 0
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\x00")
    return body.decode("utf-8", errors="replace").rstrip("\x00")


def read_info(image: Image.Image) -> tuple[str | None, dict[str, str]]:
    """(generation parameters, other text fields) of an image, as A1111's PNG Info reads them:
    the PNG `parameters` chunk, else the EXIF UserComment of a JPEG/WebP."""
    if image.format == "PNG":
        image.load()  # text chunks written after the pixel data are read only by a full load
    text = read_infotext(image)
    if text is None:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
        if comment:
            text = _user_comment(comment) or None
    items = {str(k): v if isinstance(v, (str, int, float, bool)) else str(v)
             for k, v in image.info.items() if k not in _UNSHOWN_INFO}
    return text, items


# --- img2img input -------------------------------------------------------------------------------

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


class InvalidImage(ValueError):
    """Data sent as an image that cannot be read as one; the message says why."""


class ImageTooLarge(InvalidImage):
    """An image with more pixels than the server accepts, refused from its header before it is decoded."""


# What Pillow raises for broken image data, at opening or at decoding.
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class DecodeBudget:
    """A bound on the pixels being decoded at once, over all threads: a decode waits until those running
    leave room for it (one larger than the whole budget waits to run alone). A decoded image costs about
    4 bytes a pixel, so this bounds the memory that requests sending images can take at once."""

    def __init__(self, pixels: int):
        self.pixels = pixels
        self.in_use = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int):
        pixels = min(pixels, self.pixels)
        with self._room:
            self._room.wait_for(lambda: self.in_use + pixels <= self.pixels)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._room:
                self.in_use -= pixels
                self._room.notify_all()


def too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(f"the image has {megapixels(width * height)} megapixels ({width}x{height}); this server "
                         f"accepts images of up to {megapixels(max_pixels)} megapixels (--max-input-megapixels)")


def _bomb(e: Exception, max_pixels: int) -> ImageTooLarge:
    """ImageTooLarge for Pillow's own decompression-bomb refusal (when Pillow's limit is the lower one)."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(e))
    size = f"has {megapixels(int(found.group(1)))} megapixels" if found else "is too large"
    limit = min(max_pixels, int(found.group(2))) if found else max_pixels
    return ImageTooLarge(f"the image {size}; this server accepts images of up to {megapixels(limit)} megapixels "
                         "(--max-input-megapixels)")


def open_image(source, max_pixels: int = Limits().max_input_pixels) -> Image.Image:
    """An image file (a path or a file object), opened but not decoded: its header is read and an image
    with more than `max_pixels` pixels is refused (ImageTooLarge) before any pixel is decoded; a PNG's chunk
    checksums are verified (broken data is refused now, not when the pixels are needed). The pixels are
    decoded on first use, or by `load` (under a DecodeBudget)."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    start = source.tell() if hasattr(source, "tell") else None
    try:
        image = Image.open(source)
        if image.width * image.height > max_pixels:
            raise too_large(image.width, image.height, max_pixels)
        if image.format == "PNG":  # reads the chunks (not decompressing them); the image must be opened again
            image.verify()
            if start is None:
                image.close()  # the file it opened itself
            else:
                source.seek(start)
            image = Image.open(source)
    except ImageTooLarge:
        raise
    except _BOMB as e:
        raise _bomb(e, max_pixels) from None
    except _UNREADABLE as e:
        raise InvalidImage(f"not an image that can be read ({type(e).__name__})") from None
    return image


def load(image: Image.Image, budget: DecodeBudget | None = None) -> Image.Image:
    """Decode an opened image's pixels (a no-op when they are), within `budget`. InvalidImage when its data
    turns out to be broken."""
    if not getattr(image, "tile", None):  # not a file, or decoded already
        return image
    try:
        with budget.reserve(image.width * image.height) if budget else contextlib.nullcontext():
            image.load()
    except (*_BOMB, *_UNREADABLE) as e:
        raise InvalidImage(f"not an image that can be read ({type(e).__name__})") from None
    return image


def read_image(source, max_pixels: int = Limits().max_input_pixels, budget: DecodeBudget | None = None
               ) -> Image.Image:
    """An image file (a path or a file object) decoded within `budget`, turned upright as its EXIF orientation
    says, and closed again. InvalidImage (ImageTooLarge) says what is wrong, as for `open_image`, also when the
    pixel data turns out to be broken."""
    with open_image(source, max_pixels) as opened:
        load(opened, budget)
        try:
            return ImageOps.exif_transpose(opened)
        except _UNREADABLE as e:  # a broken EXIF block
            raise InvalidImage(f"not an image that can be read ({type(e).__name__})") from None


def refuse_in_pillow(max_pixels: int) -> None:
    """Make every Image.open of this process refuse, from the header, an image with more than `max_pixels`
    pixels: Pillow's decompression-bomb check at that size, as an error. This covers what Gradio decodes
    itself (the page's image uploads). Called once at start-up by the server."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decode_base64_image(data: str, max_pixels: int = Limits().max_input_pixels, budget: DecodeBudget | None = None,
                        lazy: bool = False) -> Image.Image:
    """An image from base64 or a `data:image/...;base64,` URL. InvalidImage (a ValueError) says what is wrong
    with it; ImageTooLarge when it has more than `max_pixels` pixels (known from its header, before decoding).
    The pixels are decoded within `budget`, or, with `lazy`, left for the first use (`load`): a job decodes
    them when it runs, in the queue, and the request holds only the compressed bytes until then."""
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidImage("Image URLs are not fetched; send the image itself as base64")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidImage("Invalid encoded image: a data URL must be base64 (data:image/png;base64,...)")
    text = "".join(text.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise InvalidImage("Invalid encoded image: the text is not valid base64") from None
    try:
        image = open_image(raw, max_pixels)
        return image if lazy else load(image, budget)
    except ImageTooLarge:
        raise
    except InvalidImage as e:
        raise InvalidImage(f"Invalid encoded image: {e}") from None


def may_be_transparent(image: Image.Image) -> bool:
    """Whether the image's mode carries transparency (an alpha channel, or a palette's transparent entry)."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """RGB, with any transparency composited over `background` (A1111's `img2img_background_color`)."""
    if may_be_transparent(image):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int,
                 resize: Callable[[Image.Image, int, int], Image.Image] | None = None) -> Image.Image:
    """A1111's `resize_image`: 0 stretches to width x height; 1 scales to cover and crops the centre; 2 scales to
    fit, centres, and fills the empty bands by stretching the outermost rows or columns. (Mode 3, latent upscale,
    resizes the latent instead; for the images that go with it, such as a mask, it stretches as mode 0 does.)
    `resize` does the scaling (A1111's upscaler_for_img2img: see modules/upscaling.resize); None: Lanczos."""
    if resize is None:
        def resize(im: Image.Image, w: int, h: int) -> Image.Image:
            return im.resize((w, h), resample=Image.Resampling.LANCZOS)
    if mode not in (1, 2):
        return resize(image, width, height)
    ratio, src_ratio = width / height, image.width / image.height
    if ratio > src_ratio if mode == 1 else ratio < src_ratio:  # the width decides the scale
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = resize(image, src_w, src_h)
    out = Image.new(image.mode if image.mode in ("L", "RGB") else "RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        if ratio < src_ratio:  # bands above and below
            band = height // 2 - src_h // 2
            if band > 0:
                out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                          box=(0, band + src_h))
        elif ratio > src_ratio:  # bands left and right
            band = width // 2 - src_w // 2
            if band > 0:
                out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                          box=(band + src_w, 0))
    return out
