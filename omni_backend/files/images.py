"""ComfyUI IMAGE tensors <-> PIL images and PNG files."""

from __future__ import annotations

from pathlib import Path


def to_pil(images) -> list:
    """IMAGE [N,H,W,3] float in [0,1] -> list of PIL images."""
    from PIL import Image

    array = (images.clamp(0, 1) * 255).round().to("cpu").byte().numpy()
    return [Image.fromarray(frame) for frame in array]


def one_pil(image):
    """One ComfyUI IMAGE [1,H,W,3 or 4] -> a PIL RGB image (alpha, where present, is dropped)."""
    return to_pil(image[..., :3])[0]


def rgba_pil(image, mask=None):
    """One ComfyUI IMAGE [1,H,W,3 or 4] (+ optional MASK [1,H,W], 1 - alpha as core Load Image gives it)
    -> a PIL RGBA image. The alpha comes from the mask where given, else from a fourth channel, else the
    image is opaque (a mask the size of another image must have been refused before: checks.check_mask)."""
    import torch

    image = image[0].to("cpu", torch.float32)
    if mask is not None and mask_is_opaque(mask, image.shape[0], image.shape[1]):
        mask = None
    if mask is not None:
        alpha = 1.0 - mask.reshape(image.shape[0], image.shape[1]).to("cpu", torch.float32)
    elif image.shape[-1] == 4:
        alpha = image[..., 3]
    else:
        alpha = torch.ones(image.shape[:2])
    return to_pil(torch.cat([image[..., :3], alpha[..., None]], dim=-1)[None])[0]


def mask_is_opaque(mask, height: int, width: int) -> bool:
    """Core Load Image gives a 64x64 mask of zeros for a file without alpha, whatever its size: that
    mask means "no transparency", not a mask for this image."""
    return tuple(mask.shape[-2:]) != (height, width) and not bool(mask.any())


def save_pngs(images, directory: str | Path, prefix: str, metadata: dict | None = None) -> list[Path]:
    """Write each image as PREFIX_00001_.png (ComfyUI's naming), never overwriting earlier files."""
    import json

    from PIL.PngImagePlugin import PngInfo

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    counter = 1 + max((_counter(p, prefix) for p in directory.glob(f"{prefix}_*_.png")), default=0)
    info = None
    if metadata:
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(key, json.dumps(value))
    written = []
    for image in to_pil(images):
        path = directory / f"{prefix}_{counter:05d}_.png"
        image.save(path, pnginfo=info, compress_level=4)
        written.append(path)
        counter += 1
    return written


def _counter(path: Path, prefix: str) -> int:
    try:
        return int(path.name[len(prefix) + 1:].split("_")[0])
    except ValueError:
        return 0


def load_image(path: str | Path):
    """PNG/JPEG file -> (IMAGE [1,H,W,3], MASK [1,H,W]) floats in [0,1], as ComfyUI's Load Image gives
    them: the mask is 1 - alpha where the file has alpha, else zeros; 16-bit greyscale scaled as it does."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode == "I" or image.mode.startswith("I;16"):
            # 16/32-bit greyscale (Pillow opens a 16-bit PNG as I;16 or I): scaled by 1/255 as ComfyUI's
            # LoadImage does for mode I, so 0..65535 becomes 0..255; a plain RGB conversion would clip
            # every value above 255 to white.
            image = image.convert("I").point(lambda value: value * (1 / 255))
        has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(rgba[..., :3].copy())[None]
    mask = 1.0 - torch.from_numpy(rgba[..., 3].copy())[None] if has_alpha else torch.zeros(pixels.shape[:3])
    return pixels, mask
