"""Image processor for ProVQ tokenizers: any image in, float32 `[B, C, H, W]` pixels in [-1, 1] out.

Every input goes through the same steps, in this order:

1. **Array to image.** NumPy arrays and torch tensors become PIL images. Channels-last `[H, W, C]` is
   assumed when the last axis has 1 to 4 entries, channels-first `[C, H, W]` otherwise. `uint8` is used
   as is, `bool` maps to 0/255, `uint16` is divided by 257 (16-bit range), other integer types must lie
   in [0, 255], and floating-point arrays must lie in [0, 1] (they are multiplied by 255 and rounded).
2. **Mode.** Palette images are expanded to RGBA. Transparent pixels (RGBA, LA, palette transparency) are
   alpha-composited onto a flat background of gray level `pad_value`. 16-bit grayscale (`I;16`, `I`) is
   divided by 257. 1-bit images become 0/255. CMYK and YCbCr are converted to RGB by PIL. Then grayscale
   is repeated to RGB when `num_channels == 3`, and RGB is reduced to luma (PIL's ITU-R 601-2 formula)
   when `num_channels == 1`. Floating-point images (PIL mode `F`) are rejected because their value range
   is unknown.
3. **Size.** `resize_mode="pad"` centers the image on a `image_size x image_size` canvas of gray level
   `pad_value` (an odd margin puts the extra pixel on the right or bottom). An image larger than the
   canvas is rejected. `resize_mode="resize_crop"` resizes the shorter side to `image_size` (bicubic,
   antialiased by PIL when shrinking) and takes the center square. An image that already has the target
   size is never resampled, so 32x32 inputs round-trip exactly.
4. **Rescale.** `x / 127.5 - 1` maps uint8 [0, 255] to [-1, 1] (`do_rescale=True`, the default).

Presets for the built-in datasets come from `ProVQImageProcessor.for_dataset`: `mnist-5k` gives
(32, 1 channel, "pad", background 0), so its 28x28 digits get 2 black pixels on each side, and
`photo-patches` gives (32, 3 channels, "resize_crop"), a no-op on its 32x32 crops.
"""

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging


logger = logging.get_logger(__name__)

RESIZE_MODES = ("pad", "resize_crop")

# Processor settings for the built-in datasets (see `provq_hf.data`).
PROCESSOR_PRESETS: dict[str, dict[str, Any]] = {
    "mnist-5k": {"image_size": 32, "num_channels": 1, "resize_mode": "pad", "pad_value": 0},
    "photo-patches": {"image_size": 32, "num_channels": 3, "resize_mode": "resize_crop", "pad_value": 255},
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


class ProVQImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments that `from_pretrained(..., **kwargs)` may override."""

    image_size: int
    num_channels: int
    resize_mode: str
    pad_value: int


class ProVQImageProcessor(BaseImageProcessor):
    r"""
    Converts images of any mode and size to the square `[-1, 1]` tensors a ProVQ tokenizer encodes, and back.

    Args:
        image_size (`int`, defaults to 256):
            Side length in pixels of the square output. 256 is the LlamaGen tokenizer resolution.
        num_channels (`int`, defaults to 3):
            1 (grayscale) or 3 (RGB); inputs are converted to this many channels.
        resize_mode (`str`, defaults to `"resize_crop"`):
            `"pad"` centers the image on a canvas of `pad_value` and rejects images larger than the canvas.
            `"resize_crop"` resizes the shorter side to `image_size` and center-crops.
        pad_value (`int`, defaults to 255):
            Background gray level (0-255) that fills the padding and replaces transparent pixels. White by
            default, as image viewers show transparency; the MNIST preset uses 0, the digits' background.
        resample (`int`, defaults to `PIL.Image.Resampling.BICUBIC`):
            PIL resampling filter for `"resize_crop"`.
        do_rescale (`bool`, defaults to `True`):
            Map uint8 [0, 255] to [-1, 1]. With `False`, pixel values stay float32 in [0, 255].
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = ProVQImageProcessorKwargs

    def __init__(
        self,
        image_size: int = 256,
        num_channels: int = 3,
        resize_mode: str = "resize_crop",
        pad_value: int = 255,
        resample: int = Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels!r}.")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}.")
        if not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
            raise ValueError(f"pad_value must be an int gray level in [0, 255], got {pad_value!r}.")
        self.image_size = image_size
        self.num_channels = num_channels
        self.resize_mode = resize_mode
        self.pad_value = pad_value
        try:
            self.resample = int(Image.Resampling(resample))
        except ValueError as err:
            raise ValueError(f"resample must be a PIL.Image.Resampling filter, got {resample!r}.") from err
        self.do_rescale = bool(do_rescale)

    @classmethod
    def for_dataset(cls, name_or_path: str, **overrides) -> "ProVQImageProcessor":
        """
        Build the processor for a dataset: the preset of a built-in dataset, otherwise `"resize_crop"` at the
        channel count and image size that `provq_hf.data.dataset_info` reports. `overrides` replace fields.
        """
        if name_or_path in PROCESSOR_PRESETS:
            settings = dict(PROCESSOR_PRESETS[name_or_path])
        else:
            from .data import dataset_info  # local import: data.py imports this module

            info = dataset_info(name_or_path)
            settings = {"image_size": info["image_size"], "num_channels": info["num_channels"]}
        settings.update(overrides)
        return cls(**settings)

    def preprocess(self, images, return_tensors: str | None = None) -> BatchFeature:
        """
        Convert one image or a batch to `{"pixel_values": [B, C, image_size, image_size]}` float32.

        `images` is a PIL image, a NumPy array or torch tensor (2-D, 3-D, or 4-D for a batch), or a list of
        these. `return_tensors="pt"` returns a torch tensor, `"np"` or `None` a NumPy array.
        """
        image_list = _as_image_list(images)
        if not image_list:
            raise ValueError("preprocess received an empty list of images.")
        pixel_values = np.stack([self._process_one(image) for image in image_list])
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def postprocess(self, pixel_values: torch.Tensor | np.ndarray) -> list[Image.Image]:
        """
        Convert `[B, C, H, W]` (or one `[C, H, W]`) pixel values back to uint8 PIL images.

        Values are clamped to the valid range first, so raw decoder outputs are safe to pass. The output
        mode is `"L"` for 1 channel and `"RGB"` for 3.
        """
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().to(device="cpu", dtype=torch.float32).numpy()
        pixel_values = np.asarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        if pixel_values.ndim != 4 or pixel_values.shape[1] not in (1, 3):
            raise ValueError(
                f"postprocess expects pixel values of shape [B, C, H, W] or [C, H, W] with C in (1, 3), "
                f"got shape {tuple(pixel_values.shape)}."
            )

        if self.do_rescale:
            pixel_values = (pixel_values + 1.0) * 127.5
        pixels = np.clip(np.rint(pixel_values), 0, 255).astype(np.uint8)
        images = []
        for image in pixels:
            if image.shape[0] == 1:
                images.append(Image.fromarray(image[0], mode="L"))
            else:
                images.append(Image.fromarray(image.transpose(1, 2, 0), mode="RGB"))
        return images

    def convert_mode(self, image: Image.Image) -> Image.Image:
        """Convert a PIL image of any supported mode to `"L"` or `"RGB"` to match `num_channels`."""
        mode = image.mode
        if mode == "P":
            image = image.convert("RGBA")  # applies palette transparency, if any
        elif mode == "1":
            image = image.convert("L")
        elif mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image, dtype=np.float64) / 257.0
            image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
        elif mode == "F":
            raise ValueError(
                "Floating-point images (PIL mode 'F') have no defined value range. Convert them to 8-bit "
                "('L' or 'RGB') before processing."
            )
        elif mode not in ("L", "RGB", *_ALPHA_MODES):
            try:
                image = image.convert("RGB")
            except ValueError as err:
                raise ValueError(f"Cannot convert an image of PIL mode {mode!r} to RGB: {err}") from err

        if image.mode in _ALPHA_MODES:
            image = self._composite_on_background(image)

        target_mode = "L" if self.num_channels == 1 else "RGB"
        if image.mode != target_mode:
            image = image.convert(target_mode)
        return image

    def _composite_on_background(self, image: Image.Image) -> Image.Image:
        # out = color * alpha + pad_value * (1 - alpha), per channel
        straight_mode = "LA" if image.mode in ("LA", "La") else "RGBA"
        values = np.asarray(image.convert(straight_mode), dtype=np.float64)
        alpha = values[..., -1:] / 255.0
        blended = values[..., :-1] * alpha + self.pad_value * (1.0 - alpha)
        blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        if straight_mode == "LA":
            return Image.fromarray(blended[..., 0], mode="L")
        return Image.fromarray(blended, mode="RGB")

    def fit_size(self, image: Image.Image) -> Image.Image:
        """Bring an image to `image_size x image_size` by padding or by resize + center crop."""
        size = self.image_size
        width, height = image.size
        if (width, height) == (size, size):
            return image

        if self.resize_mode == "pad":
            if width > size or height > size:
                raise ValueError(
                    f"Image of size {width}x{height} is larger than the {size}x{size} canvas of "
                    f"resize_mode='pad'. Use resize_mode='resize_crop' or a larger image_size."
                )
            fill = self.pad_value if image.mode == "L" else (self.pad_value,) * 3
            canvas = Image.new(image.mode, (size, size), fill)
            canvas.paste(image, ((size - width) // 2, (size - height) // 2))
            return canvas

        scale = size / min(width, height)
        new_width = max(size, round(width * scale))
        new_height = max(size, round(height * scale))
        image = image.resize((new_width, new_height), resample=self.resample)
        left = (new_width - size) // 2
        top = (new_height - size) // 2
        return image.crop((left, top, left + size, top + size))

    def _process_one(self, image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            image = array_to_image(image)
        image = self.fit_size(self.convert_mode(image))
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[None]  # [H, W] -> [1, H, W]
        else:
            pixels = pixels.transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]
        if self.do_rescale:
            pixels = pixels / 127.5 - 1.0
        return np.ascontiguousarray(pixels, dtype=np.float32)


def array_to_image(array: np.ndarray | torch.Tensor) -> Image.Image:
    """Convert one 2-D or 3-D NumPy array or torch tensor to a PIL image (rules in the module docstring)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4):
        array = array.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(
            f"Expected an image array of shape [H, W], [H, W, C] or [C, H, W] with C in 1-4, "
            f"got shape {array.shape}."
        )

    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = np.rint(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0.0 or np.nanmax(array) > 1.0 or np.isnan(array).any()):
            raise ValueError(
                f"Floating-point image arrays must lie in [0, 1], got range "
                f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]. Pass uint8 arrays for [0, 255] data, "
                f"and use `postprocess` for [-1, 1] model outputs."
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"Integer image arrays of dtype {array.dtype} must lie in [0, 255], got range "
                f"[{array.min()}, {array.max()}]."
            )
        array = array.astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"Unsupported image array dtype {array.dtype}; expected uint8, uint16, bool or float.")

    if array.ndim == 2:
        return Image.fromarray(array, mode="L")
    return Image.fromarray(array, mode={2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[-1]])


def _as_image_list(images) -> list:
    """Flatten the accepted input forms to a list of single images."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        return list(images)
    raise ValueError(
        f"images must be a PIL image, a NumPy array, a torch tensor or a list of these, got {type(images).__name__}."
    )


def register_image_processor(config_class: type) -> None:
    """
    Register `ProVQImageProcessor` with `AutoImageProcessor` for `config_class` (the ProVQ config class).

    Safe to call more than once. After it, `AutoImageProcessor.from_pretrained(dir)` loads a folder written
    by `ProVQImageProcessor.save_pretrained(dir)`.
    """
    from transformers import AutoImageProcessor

    parameters = inspect.signature(AutoImageProcessor.register).parameters
    if "image_processor_classes" in parameters:
        # Registering the class under both backend names keeps AutoImageProcessor, which prefers the
        # torchvision backend, from logging a fallback warning.
        classes = {"torchvision": ProVQImageProcessor, "pil": ProVQImageProcessor}
        AutoImageProcessor.register(config_class, image_processor_classes=classes, exist_ok=True)
    else:
        AutoImageProcessor.register(config_class, slow_image_processor_class=ProVQImageProcessor, exist_ok=True)


__all__ = ["PROCESSOR_PRESETS", "ProVQImageProcessor", "array_to_image", "register_image_processor"]
