"""Our LATENT and ComfyUI's core VAE nodes, both ways, on a trained VAE (the reference model's).

Sample's LATENT holds raw VAE latents in ComfyUI's layout, so core VAE Decode can decode it, and a
LATENT from core nodes (VAE Encode, KSampler) can go into VAE Decode Patch-Parallel. Shapes alone do
not prove the colours: this runs ComfyUI's own Wan VAE (comfy.ldm.wan.vae, the module core VAE
Decode/Encode use for Qwen-Image and Wan 2.1, and its [-1, 1] <-> [0, 1] conversion) on the
reference model's VAE weights in ComfyUI's key layout, in a ComfyUI interpreter, and compares.

Part of the real-ComfyUI tier (tests/comfyui_host.py): runs with COMFYUI_PATH, skipped without.
"""

from __future__ import annotations

import json

import safetensors.torch
import torch

from comfyui_host import tier
from omni_backend.engine import Engine
from omni_backend.reference import MODEL_DIR
from omni_backend.request import GenerationRequest
from omni_backend.single_file import wan_vae_keys
from omni_backend.spec import ModelSpec

pytestmark = tier

# Runs inside ComfyUI: its Wan VAE module with the reference VAE's shapes, its pixel conversions.
COMFY_SIDE = """
import json, sys, torch, safetensors.torch
work = sys.argv[1]
sys.argv = [sys.argv[0], "--cpu"]  # no GPU here: ComfyUI's options, read as its main.py has them read
import comfy.options
comfy.options.enable_args_parsing()
import comfy.ldm.wan.vae
config = json.load(open(f"{work}/vae_config.json"))
vae = comfy.ldm.wan.vae.WanVAE(dim=config["base_dim"], z_dim=config["z_dim"], dim_mult=config["dim_mult"],
                               num_res_blocks=config["num_res_blocks"], attn_scales=config["attn_scales"],
                               temperal_downsample=config["temperal_downsample"], dropout=0.0).eval()
vae.load_state_dict(safetensors.torch.load_file(f"{work}/qwen_image_vae.safetensors"), strict=True)
inputs = safetensors.torch.load_file(f"{work}/inputs.safetensors")
with torch.no_grad():
    # core VAE Decode: decode(latent) then (x + 1) / 2 clamped to 0..1, channels last
    decoded = vae.decode(inputs["latent"].unsqueeze(2))[:, :, 0]
    pixels = torch.clamp((decoded + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)
    # core VAE Encode: x * 2 - 1 channels first, the posterior mean as the LATENT
    encoded = vae.encode(inputs["image"].movedim(-1, 1).unsqueeze(2) * 2.0 - 1.0)[:, :, 0]
safetensors.torch.save_file({"pixels": pixels.contiguous(), "latent": encoded.contiguous()}, f"{work}/outputs.safetensors")
"""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def test_latents_cross_between_our_nodes_and_core_vae_nodes(tmp_path, comfyui_code):
    engine = Engine()
    spec = ModelSpec.from_folder(str(MODEL_DIR), dtype="fp32", device="cpu")
    request = GenerationRequest(prompt="a large red circle at the top left on a blue background", steps=25,
                                guidance=4.0, width=64, height=64)
    latent = engine.generate(spec, request).latents
    ours = engine.decode(spec, latent).movedim(1, -1)  # as an IMAGE: [1, H, W, 3] in 0..1
    vae = engine.loaded(spec).pipe.vae
    config = dict(vae.config)
    state = {wan_vae_keys.to_original(key, config["num_res_blocks"]): value.contiguous()
             for key, value in vae.state_dict().items()}
    safetensors.torch.save_file(state, tmp_path / "qwen_image_vae.safetensors")
    (tmp_path / "vae_config.json").write_text(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))
    safetensors.torch.save_file({"latent": latent.contiguous(), "image": ours.contiguous()},
                                tmp_path / "inputs.safetensors")
    (tmp_path / "comfy_side.py").write_text(COMFY_SIDE)
    done = comfyui_code.run(tmp_path / "comfy_side.py", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = safetensors.torch.load_file(tmp_path / "outputs.safetensors")

    # Our Sample -> core VAE Decode: the same picture as our own decode node.
    assert theirs["pixels"].shape == ours.shape
    print(f"core decode vs ours: {psnr(theirs['pixels'], ours):.1f} dB")
    assert psnr(theirs["pixels"], ours) > 40, psnr(theirs["pixels"], ours)
    # Core VAE Encode -> our VAE Decode: ComfyUI's LATENT of a picture is the one diffusers' encoder gives
    # (raw posterior mean, no normalisation), and our decode gives the picture back (the VAE's round trip).
    with torch.no_grad():
        diffusers_latent = vae.encode(ours.movedim(-1, 1).unsqueeze(2) * 2.0 - 1.0).latent_dist.mode()[:, :, 0]
    print(f"core encode vs diffusers encode: max abs diff {float((theirs['latent'] - diffusers_latent).abs().max()):.2e}")
    assert torch.allclose(theirs["latent"], diffusers_latent, atol=1e-4)
    round_trip = engine.decode(spec, theirs["latent"]).movedim(1, -1)
    print(f"core encode -> our decode vs the picture: {psnr(round_trip, ours):.1f} dB")
    assert psnr(round_trip, ours) > 25, psnr(round_trip, ours)
    engine.unload_all()
