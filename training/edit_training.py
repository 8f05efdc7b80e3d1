"""Training the edit DiT as QwenImageEditPipeline runs it: the noisy latent's tokens, then the input
image's latent tokens in the same sequence (a second entry of img_shapes), prediction read from the first.

The VAE and the text encoder are frozen, so both run once up front over a pool of edits: the input
and target renders become normalised latents (the pipeline's `_encode_vae_image` arithmetic), and
every (instruction, input image) pair, and the empty instruction with the same image (the negative
branch true CFG subtracts), becomes its prompt embedding through the pipeline's own `encode_prompt`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .dit_training import padded_batch, train_loop
from .edit_dataset import TRAINING_KIND_SHARES, Edit, random_edits, render_pairs
from .vae_training import encode_means


@dataclass
class EditPool:
    edits: list[Edit]
    inputs: torch.Tensor  # [N, z, h, w] normalised latents of the input renders
    targets: torch.Tensor  # [N, z, h, w] of the edited renders
    embeds: list[torch.Tensor]  # [tokens, dim] per edit: its instruction read with its input image
    empty_embeds: list[torch.Tensor]  # the empty instruction with the same image


def normalised_latents(vae, images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    return (encode_means(vae, images) - mean) / std


@torch.no_grad()
def instruction_embeddings(pipe, prompts: list[str], images: np.ndarray, batch: int = 128) -> list[torch.Tensor]:
    """[tokens, dim] per (prompt, image [3, H, W] in 0..1), exactly as the pipeline encodes them at inference."""
    from PIL import Image

    out = []
    for start in range(0, len(prompts), batch):
        pils = [Image.fromarray(np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8))
                for image in images[start:start + batch]]
        embeds, mask = pipe.encode_prompt(prompts[start:start + batch], image=pils, device="cpu")
        # The pipeline returns no mask when no prompt of the batch is padded.
        lengths = mask.sum(dim=1).tolist() if mask is not None else [embeds.shape[1]] * len(pils)
        for embed, length in zip(embeds, lengths):
            out.append(embed[:length].clone())
    return out


def build_edit_pool(pipe, count: int, seed: int, log=print) -> EditPool:
    start = time.time()
    rng = np.random.default_rng(seed)
    edits = random_edits(rng, count, shares=TRAINING_KIND_SHARES)
    inputs, targets = render_pairs(edits, rng)
    input_latents = normalised_latents(pipe.vae, inputs)
    target_latents = normalised_latents(pipe.vae, targets)
    log(f"edit pool: {count} edits -> latents {tuple(input_latents.shape)} in {time.time() - start:.0f}s")
    embeds = instruction_embeddings(pipe, [edit.instruction for edit in edits], inputs)
    empty = instruction_embeddings(pipe, [""] * len(edits), inputs)
    log(f"edit pool: instruction embeddings ({max(e.shape[0] for e in embeds)} tokens at most) "
        f"after {time.time() - start:.0f}s")
    return EditPool(edits, input_latents, target_latents, embeds, empty)


def edit_flow_matching_loss(transformer, pipe, target, condition, prompt_embeds, prompt_mask, generator):
    """Rectified flow on the target latent (as dit_training.flow_matching_loss), with the input image's
    latent appended to the sequence unnoised, as QwenImageEditPipeline appends it at every step."""
    batch, channels, height, width = target.shape
    packed = pipe._pack_latents(target, batch, channels, height, width)
    packed_condition = pipe._pack_latents(condition, batch, channels, *condition.shape[2:])
    noise = torch.randn(packed.shape, generator=generator)
    t = torch.sigmoid(torch.randn(batch, generator=generator))
    noisy = (1 - t.view(-1, 1, 1)) * packed + t.view(-1, 1, 1) * noise
    grid = [(1, height // 2, width // 2), (1, condition.shape[2] // 2, condition.shape[3] // 2)]
    prediction = transformer(
        hidden_states=torch.cat([noisy, packed_condition], dim=1), timestep=t, encoder_hidden_states=prompt_embeds,
        encoder_hidden_states_mask=prompt_mask, img_shapes=[grid] * batch, return_dict=False,
    )[0][:, :packed.shape[1]]
    return F.mse_loss(prediction, noise - packed)


def train_edit_dit(transformer, pipe, pool: EditPool, *, steps: int, batch: int = 64, lr: float = 5e-4,
                   ema_decay: float = 0.995, instruction_dropout: float = 0.1, seed: int = 0,
                   max_seconds: float | None = None, log_every: int = 100, log=print):
    """Returns (EMA copy of the transformer, {"steps", "loss", "first_loss", "seconds"})."""

    def batch_loss(rng, generator):
        index = rng.integers(len(pool.edits), size=batch)
        dropped = rng.random(batch) < instruction_dropout
        prompt_embeds, prompt_mask = padded_batch(
            [pool.empty_embeds[i] if drop else pool.embeds[i] for i, drop in zip(index, dropped)])
        return edit_flow_matching_loss(transformer, pipe, pool.targets[index], pool.inputs[index], prompt_embeds,
                                       prompt_mask, generator)

    return train_loop(transformer, batch_loss, steps=steps, lr=lr, ema_decay=ema_decay, seed=seed,
                      max_seconds=max_seconds, log_every=log_every, log=log, name="edit dit")
