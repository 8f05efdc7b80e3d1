"""Training AutoencoderKLQwenImage on single images, and measuring it.

Two departures from `vae.encode`/`vae.decode`, both exact for one-frame inputs:
- `vae.decode` clamps to [-1, 1]; a clamped output passes no gradient where it overshoots, and
  training stalls. We call the decoder itself, unclamped.
- The causal 3-D convolutions pad time with two zero frames, so for a single frame only the last
  temporal slice of each kernel ever touches data. `single_frame_convs` runs them as 2-D
  convolutions with that slice: the same numbers, about 1.6x faster on this CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import IMAGE_SIZE, PALETTE, POSITIONS, held_out_combinations, random_scenes, render_batch


def _conv_as_2d(self, x, cache_x=None):
    # x: [B, C, 1, H, W]; self._padding is (w, w, h, h, 2 * t, 0) from QwenImageCausalConv3d.
    weight = self.weight[:, :, -1]
    y = F.conv2d(x[:, :, 0], weight, self.bias, stride=self.stride[1:], padding=(self._padding[2], self._padding[0]))
    return y.unsqueeze(2)


@contextlib.contextmanager
def single_frame_convs(vae):
    """Run the VAE's causal 3-D convolutions as 2-D ones (valid for one-frame inputs only)."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    # Nested use (an evaluation inside the training loop) leaves the outer context's patches alone.
    convs = [m for m in vae.modules() if isinstance(m, QwenImageCausalConv3d) and "forward" not in vars(m)]
    for conv in convs:
        conv.forward = types.MethodType(_conv_as_2d, conv)
    try:
        yield vae
    finally:
        for conv in convs:
            del conv.forward  # back to the class's method


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] (numpy) -> [N, 3, 1, H, W] in [-1, 1] (the VAE's video layout)."""
    return torch.from_numpy(images).mul(2).sub(1).unsqueeze(2)


def encode_moments(vae, pixels: torch.Tensor):
    """Posterior mean and log-variance, as `vae.encode(...).latent_dist` computes them."""
    moments = vae.quant_conv(vae.encoder(pixels))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decoder(vae.post_quant_conv(latents))


def psnr_db(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR on the [0, 1] scale of images given in [-1, 1] (the reconstruction clamped, as decode does)."""
    error = ((reconstruction.clamp(-1, 1) - target) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(error, 1e-12))


def held_out_images(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_batch(random_scenes(rng, count, held_out_combinations()), rng)


@torch.no_grad()
def evaluate_vae(vae, images: np.ndarray, normaliser=None, batch: int = 32) -> float:
    """Held-out PSNR of whole images; pass the normaliser while training (before it is folded)."""
    vae.eval()
    errors = []
    with single_frame_convs(vae):
        for start in range(0, len(images), batch):
            pixels = to_model_range(images[start:start + batch])
            mean, _ = encode_moments(vae, pixels)
            if normaliser is not None:
                mean = (mean - normaliser.mean) / normaliser.std  # what the decoder is trained on
            errors.append(((decode_unclamped(vae, mean).clamp(-1, 1) - pixels) / 2).pow(2).mean().item())
    return 10 * math.log10(1.0 / max(float(np.mean(errors)), 1e-12))


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def random_crops(images: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """Crops at multiples of 8 pixels, so they sit on the latent grid as whole images do."""
    size = images.shape[-1]
    if crop >= size:
        return images
    slots = (size - crop) // 8 + 1
    ys, xs = rng.integers(slots, size=len(images)) * 8, rng.integers(slots, size=len(images)) * 8
    return np.stack([image[:, y:y + crop, x:x + crop] for image, y, x in zip(images, ys, xs)])


def shape_crops(scenes, images: np.ndarray, crop: int, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Crops on the latent grid, `fraction` of them around each scene's shape (its named position,
    +-8 px) and the rest anywhere: a random 32 px crop is often plain background, which teaches
    colours but not edges."""
    size = images.shape[-1]
    last = (size - crop) // 8
    out = []
    for scene, image in zip(scenes, images):
        if rng.random() < fraction:
            fx, fy = POSITIONS[scene.position]
            y, x = (int(np.clip(round((f * size - crop / 2) / 8) + rng.integers(-1, 2), 0, last)) * 8
                    for f in (fy, fx))
        else:
            y, x = rng.integers(last + 1, size=2) * 8
        out.append(image[:, y:y + crop, x:x + crop])
    return np.stack(out)


def edge_l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the images' horizontal and vertical pixel differences: weighs the shapes' edges,
    which a plain L1 + L2 averages away against the flat background."""
    return (F.l1_loss(output.diff(dim=-1), target.diff(dim=-1)) + F.l1_loss(output.diff(dim=-2), target.diff(dim=-2)))


class LatentNormaliser:
    """Scales latents per channel to unit spread on their way to the decoder, during training only.

    Without it the encoder's first latents barely differ between images (std ~0.04), the
    decoder learns to ignore them and draws the batch's average colour. The statistics are
    running averages (first set from the first batch), never the batch's own: a decoder trained
    on batch statistics reconstructed crops at 23 dB but whole held-out images at 16 dB, as the
    statistics it was trained with were not the ones it decoded with. After training they are
    folded into `post_quant_conv` (a 1x1 convolution, so the fold is exact): the saved VAE
    decodes raw latents, as diffusers expects.
    """

    def __init__(self, channels: int, momentum: float = 0.02):
        self.mean = torch.zeros(1, channels, 1, 1, 1)
        self.std = torch.ones(1, channels, 1, 1, 1)
        self.momentum = momentum
        self.started = False

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean = latents.mean(dim=(0, 2, 3, 4), keepdim=True)
            std = latents.std(dim=(0, 2, 3, 4), keepdim=True) + 1e-5
            weight = self.momentum if self.started else 1.0
            self.mean.lerp_(mean, weight)
            self.std.lerp_(std, weight)
            self.started = True
        return (latents - self.mean) / self.std

    @torch.no_grad()
    def fold_into(self, vae) -> None:
        conv = vae.post_quant_conv  # weight [out, in, 1, 1, 1]
        scale = 1.0 / self.std.view(1, -1, 1, 1, 1)
        conv.bias -= (conv.weight * scale * self.mean.view(1, -1, 1, 1, 1)).sum(dim=(1, 2, 3, 4))
        conv.weight *= scale


def train_vae(vae, *, steps: int, batch: int = 16, crop: int = 32, lr: float = 1e-4, latent_noise: float = 0.05,
              seed: int = 0, max_seconds: float | None = None, log_every: int = 50,
              eval_images: np.ndarray | None = None, centred_crops: float = 0.0, edge_weight: float = 0.0,
              log=print) -> dict:
    """Train as a plain autoencoder on the posterior mean: L1 + L2 on the unclamped decoder.

    - Crops: the VAE is convolutional, so 32-pixel crops teach it edges and colours at a quarter
      of the cost of whole images, i.e. four times the updates in the same time.
    - No KL term, no posterior sampling: the pipeline only ever uses the mean, and sampling with
      the initial log-variance (std ~1) drowns the signal. Instead the decoder sees the
      normalised mean plus `latent_noise`, so it tolerates the small latent errors a DiT makes.
    - The learning rate is low on purpose: at 3e-4 and above this architecture (RMS-normalised
      residual blocks) falls into a plateau where the latent carries only light-or-dark, or
      collapses outright; 1e-4 trains steadily.
    - Shapes (opt-in, off in the committed model): `centred_crops` is the fraction of crops taken
      around the shape (`shape_crops`), `edge_weight` adds `edge_l1`. At 0.75 and 1.0, 2500 steps
      gave 27.0 dB held-out (25.4 without) and kept the shape of 0.57 of held-out renders (0.35).
    Returns {"steps", "first_loss", "loss", "seconds", "psnr_db" (held-out, whole images)}.
    """
    rng = np.random.default_rng(seed)
    noise = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    normaliser = LatentNormaliser(vae.config.z_dim)
    warmup = min(50, max(1, steps // 10))
    start, losses, step = time.time(), [], 0
    vae.train()
    with single_frame_convs(vae):
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            scenes = random_scenes(rng, batch)
            images = render_batch(scenes, rng)
            if centred_crops:
                images = shape_crops(scenes, images, crop, rng, centred_crops)
            else:  # the committed model's path: its random draws stay as they were
                images = random_crops(images, crop, rng)
            pixels = to_model_range(images)
            mean, _ = encode_moments(vae, pixels)
            latents = normaliser(mean)
            output = decode_unclamped(vae, latents + latent_noise * torch.randn(latents.shape, generator=noise))
            loss = F.l1_loss(output, pixels) + F.mse_loss(output, pixels)
            if edge_weight:
                loss = loss + edge_weight * edge_l1(output, pixels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            out_of_time = max_seconds is not None and time.time() - start > max_seconds
            if (step + 1) % log_every == 0 or step + 1 == steps or out_of_time:
                log(f"vae step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                    f"train psnr {psnr_db(output.detach(), pixels):.1f} dB  {time.time() - start:.0f}s")
            if eval_images is not None and (step + 1) % (10 * log_every) == 0:
                log(f"vae held-out psnr {evaluate_vae(vae, eval_images[:32], normaliser):.2f} dB (32 images)")
                vae.train()
            if out_of_time:
                log(f"vae: time budget reached after {step + 1} steps")
                break
    normaliser.fold_into(vae)
    vae.eval()
    window = max(1, min(log_every, len(losses) // 2))
    result = {"steps": step + 1, "first_loss": float(np.mean(losses[:window])),
              "loss": float(np.mean(losses[-window:])), "seconds": time.time() - start}
    if eval_images is not None:
        result["psnr_db"] = evaluate_vae(vae, eval_images)
        log(f"vae held-out psnr {result['psnr_db']:.2f} dB")
    return result


@torch.no_grad()
def round_trip(vae, images: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) and decode as the pipeline does: [N, 3, H, W] in [0, 1] in and out."""
    vae.eval()
    with single_frame_convs(vae):
        mean, _ = encode_moments(vae, to_model_range(images))
        return ((decode_unclamped(vae, mean).clamp(-1, 1)[:, :, 0] + 1) / 2).numpy()


@torch.no_grad()
def check_palette(vae) -> dict:
    """Round-trip a flat image of each palette colour: the largest RGB error (0..1 scale) and
    whether every colour comes back nearer to itself than to any other palette colour."""
    names = list(PALETTE)
    colours = torch.tensor([PALETTE[name] for name in names], dtype=torch.float32)
    flat = colours.view(-1, 3, 1, 1).expand(-1, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous().numpy()
    got = torch.from_numpy(round_trip(vae, flat)).mean(dim=(2, 3))
    nearest = torch.cdist(got, colours).argmin(dim=1)
    return {"max_error": float((got - colours).norm(dim=1).max()),
            "all_kept": bool((nearest == torch.arange(len(names))).all())}


@torch.no_grad()
def shape_round_trip(vae, images_per_scene: int = 4, seed: int = 0) -> float:
    """Fraction of held-out renders whose shape the evaluation still recognises after encode + decode.

    The DiT can only draw what the VAE can decode, so this bounds the model's shape score.
    """
    from .dataset import held_out_scenes
    from .evaluate import guess_shape

    scenes = held_out_scenes() * images_per_scene
    back = round_trip(vae, render_batch(scenes, np.random.default_rng(seed))).transpose(0, 2, 3, 1)
    return float(np.mean([guess_shape(scene, image) == scene.shape for scene, image in zip(scenes, back)]))


@torch.no_grad()
def encode_means(vae, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Posterior means [N, z, H/8, W/8] (the pipeline's latent for an image: `latent_dist.mean`)."""
    vae.eval()
    chunks = []
    with single_frame_convs(vae):
        for start in range(0, len(images), batch):
            mean, _ = encode_moments(vae, to_model_range(images[start:start + batch]))
            chunks.append(mean[:, :, 0])
    return torch.cat(chunks)


def scene_latents(vae, size: int, count: int = 2, seed: int = 0) -> torch.Tensor:
    """Latents [count, z, size/8, size/8] of rendered scenes, as decoders meet them (the posterior mean).

    At sizes above the training size (64 px) each image is a mosaic of 64 px scenes, so a large
    image has as many edges per area as a small one (a single scene scaled up would be mostly flat).
    """
    from . import dataset

    rng = np.random.default_rng(seed)
    per_side = max(1, size // dataset.IMAGE_SIZE)
    images = []
    for _ in range(count):
        tiles = dataset.render_batch(dataset.random_scenes(rng, per_side * per_side), rng, size // per_side)
        rows = [np.concatenate(list(tiles[r * per_side:(r + 1) * per_side]), axis=2) for r in range(per_side)]
        images.append(np.concatenate(rows, axis=1))
    return encode_means(vae, np.stack(images))
