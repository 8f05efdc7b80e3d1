"""Stand-ins for the ComfyUI core nodes our workflows use, with ComfyUI's own input names and order.

They write files the way ComfyUI does (PREFIX_00001_.png in the output folder, the workflow in the
PNG text chunks), so a workflow runs the same headless and in ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

from omni_backend.files.images import load_image, save_pngs

from ..nodes.comfy_bridge import HEADLESS as HOST

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def output_target(filename_prefix) -> tuple[Path, str]:
    """(folder, file prefix) inside the output folder, as ComfyUI allows: a name or "sub/folder/name".
    A prefix that would write anywhere else (absolute, "..", a link out) is refused, as ComfyUI's own
    Save Image refuses it."""
    from omni_backend.errors import OmniInputError

    root = Path(HOST.output_dir).resolve()
    relative = Path(str(filename_prefix))
    target = (root / relative).resolve()
    if not isinstance(filename_prefix, str) or not filename_prefix.strip() or relative.is_absolute() \
            or ".." in relative.parts or not target.is_relative_to(root) or target == root:
        raise OmniInputError("filename_prefix", filename_prefix, "would write outside the output folder",
                             "use a name such as ComfyUI, or a sub-folder inside the output folder (e.g. omni/cat)")
    return target.parent, target.name


class SaveImage:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    @classmethod
    def check_inputs(cls, filename_prefix="ComfyUI", **_):
        output_target(filename_prefix)

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        metadata = {"prompt": prompt, **(extra_pnginfo or {})} if prompt is not None else None
        folder, prefix = output_target(filename_prefix)
        paths = save_pngs(images, folder, prefix, metadata)
        HOST.written.extend(paths)
        return {"ui": {"images": [{"filename": p.name, "subfolder": "", "type": "output"} for p in paths]}}


class PreviewImage(SaveImage):
    @classmethod
    def check_inputs(cls, **_):
        pass  # writes nothing

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        # ComfyUI writes previews to its temp folder; headless there is nothing to show them in.
        return {"ui": {"images": []}}


class SaveAnimatedPNG:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    CATEGORY = "image/animation"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            "compress_level": ("INT", {"default": 4, "min": 0, "max": 9}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    check_inputs = SaveImage.check_inputs

    def save_images(self, images, fps, compress_level, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        from omni_backend.files.images import to_pil

        frames = to_pil(images)
        folder, prefix = output_target(filename_prefix)
        folder.mkdir(parents=True, exist_ok=True)
        index = 1 + sum(1 for _ in folder.glob(f"{prefix}_*_.png"))
        path = folder / f"{prefix}_{index:05d}_.png"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000.0 / fps), loop=0,
                       compress_level=compress_level)
        HOST.written.append(path)
        return {"ui": {"images": [{"filename": path.name, "subfolder": "", "type": "output"}], "animated": (True,)}}


class SaveAudio:
    """Core Save Audio: one FLAC file per batch entry in the output folder (audio/ComfyUI_00001_.flac)."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save_flac"
    CATEGORY = "audio"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",), "filename_prefix": ("STRING", {"default": "audio/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    check_inputs = SaveImage.check_inputs

    def save_flac(self, audio, filename_prefix="audio/ComfyUI", prompt=None, extra_pnginfo=None):
        from omni_backend.files.audio_files import save_flacs

        folder, prefix = output_target(filename_prefix)
        paths = save_flacs(audio, folder, prefix)
        HOST.written.extend(paths)
        return {"ui": {"audio": [{"filename": p.name, "subfolder": "", "type": "output"} for p in paths]}}


class PreviewAudio(SaveAudio):
    @classmethod
    def check_inputs(cls, **_):
        pass  # writes nothing

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_flac(self, audio, filename_prefix="audio/ComfyUI", prompt=None, extra_pnginfo=None):
        from omni_backend.files.audio_files import check_audio

        check_audio("audio", audio)  # ComfyUI writes previews to its temp folder; headless nothing shows them
        return {"ui": {"audio": []}}


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        folder = HOST.input_dir
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image):
        from omni_backend.errors import OmniInputError

        path = HOST.input_dir / image
        if Path(image).is_absolute() or ".." in Path(image).parts or not path.is_file():
            raise OmniInputError("image", image, f"not found in {HOST.input_dir}", "put the file in the input folder")
        return load_image(path)


class JoinImageWithAlpha:
    """Core Join Image with Alpha (comfy_extras/nodes_compositing.py): IMAGE + MASK -> RGBA IMAGE, alpha
    = 1 - mask, the mask resized to the image where their sizes differ (as core does)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "join_image_with_alpha"
    CATEGORY = "mask/compositing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "alpha": ("MASK",)}}

    def join_image_with_alpha(self, image, alpha):
        import torch
        import torch.nn.functional as F

        alpha = alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1])
        if tuple(alpha.shape[-2:]) != tuple(image.shape[1:3]):
            alpha = F.interpolate(alpha, size=tuple(image.shape[1:3]), mode="bilinear")
        alpha = 1.0 - alpha[:, 0]
        batch = min(len(image), len(alpha))
        return (torch.stack([torch.cat((image[i][..., :3], alpha[i][..., None]), dim=-1) for i in range(batch)]),)


CORE_NODE_CLASSES = {
    "JoinImageWithAlpha": JoinImageWithAlpha,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "SaveAnimatedPNG": SaveAnimatedPNG,
    "LoadImage": LoadImage,
    "SaveAudio": SaveAudio,
    "PreviewAudio": PreviewAudio,
}
