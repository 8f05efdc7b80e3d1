"""Stable-Audio-Open: StableAudioPipeline (text to stereo audio, CFG batched into one call).

The pipeline always denoises the model's whole window (transformer `sample_size` latents: 47.55 s for
the real model) and cuts the asked seconds out of the decoded waveform, from `audio_start_in_s` to
`audio_end_in_s`. So its LATENT is the whole window (ComfyUI's audio layout `[B, C, L]`, raw VAE latents:
the Oobleck VAE has no scaling) and the decode trims: `audio_window` says which samples to keep.
The pipeline has only the old `callback`/`callback_steps` hook (it refuses `callback_on_step_end`).
Its scheduler (CosineDPMSolverMultistepScheduler) draws its noise with torchsde's Brownian tree.
"""

from __future__ import annotations

import math
import warnings

from ...options import Option, OptionGroup
from ..base import GuidanceStyle, ModelFamily

AUDIO_WINDOW = OptionGroup(
    key="audio-window", node_id="OmniAudioWindow", title="Omni Audio Window",
    description="Audio models' options for Sample: which part of the model's window to keep (the pipeline always "
                "makes the whole window, 47.55 s for Stable Audio Open, and cuts this part out). Connect its "
                "options output to Sample's options input.",
    options=(
        Option("seconds", "FLOAT", "Seconds of audio to keep (0 = the model's whole window).", default=0.0,
               low=0.0, high=1000.0, step=0.1, fix="use 0 (the model's whole window) or a length such as 10.0"),
        Option("start", "FLOAT", "Where the kept seconds start in the model's window.", default=0.0, low=0.0,
               high=1000.0, step=0.1, fix="use 0.0 or a few seconds"),
    ))

# The scheduler asks torchsde's Brownian tree for noise at sigma_min computed in float32, a hair below
# the tree's own float64 start; torchsde warns on every step ("Should have ta>=t0 but got ...") and
# still returns the noise at the start. Nothing is wrong, so the warning would only bury the log.
warnings.filterwarnings("ignore", message=r"Should have t[ab]", category=UserWarning, module=r"torchsde")


class StableAudio(ModelFamily):
    key = "stable-audio"
    title = "Stable-Audio-Open"
    pipeline_classes = ("StableAudioPipeline",)
    audio = True
    option_groups = (AUDIO_WINDOW,)
    guidance = GuidanceStyle("cfg", "guidance_scale")
    default_steps = 100
    default_guidance = 7.0
    example_model = "stable-audio-open-1.0"
    example_sample = dict(steps=50, guidance=7.0, negative_prompt="low quality")
    example_options = dict(seconds=5.0)
    example_prompt = "the sound of a hammer hitting a wooden surface"
    # TeaCache: vLLM-Omni's polynomial for StableAudioDiTModel (its extractor: the first block's norm1).
    teacache_coefficients = (121.7749, -153.7449, 68.0537, -12.2813, 1.07339)
    # diffusers has no LoRA loader for this pipeline; the LoRA feature loads into these with peft.
    peft_lora_components = ("transformer",)

    # No `_cp_plan`/`_tp_plan` in diffusers, and its attention processor (rotary on half the head,
    # grouped key/value heads) is not diffusers' dispatcher: no sequence or tensor split.
    supports_sequence_parallel = False
    supports_tensor_parallel = False

    def sequence_parallel_plan(self, transformer):
        return None

    def tensor_parallel_plan(self, transformer):
        return None

    def block_lists(self, transformer):
        register_block_layout()
        return [("transformer_blocks", transformer.transformer_blocks)]

    def teacache_modulated_input(self, block, args, kwargs):
        from ...blocks.block_io import block_arguments

        return block.norm1(block_arguments(block, args, kwargs)["hidden_states"])

    def latent_channels(self, vae_config):
        return int(vae_config.get("decoder_input_channels", 64))

    # ---- audio length ------------------------------------------------------------------------
    @staticmethod
    def hop_length(vae_config: dict) -> int:
        """Waveform samples per latent step (the product of the Oobleck VAE's downsampling ratios)."""
        return math.prod(int(r) for r in vae_config.get("downsampling_ratios", [2, 4, 4, 8, 8]))

    @staticmethod
    def sample_rate(vae_config: dict) -> int:
        return int(vae_config.get("sampling_rate", 44100))

    def max_seconds(self, transformer_config: dict, vae_config: dict) -> float:
        """The model's window: what the pipeline always generates (47.55 s for Stable Audio Open 1.0)."""
        samples = int(transformer_config.get("sample_size", 1024)) * self.hop_length(vae_config)
        return samples / self.sample_rate(vae_config)

    def audio_window(self, request, transformer_config: dict, vae_config: dict) -> tuple[float, float]:
        """(start, end) seconds the pipeline is asked for; seconds 0 = the rest of the window."""
        seconds, start = request.options["seconds"], request.options["start"]
        end = start + seconds if seconds > 0 else self.max_seconds(transformer_config, vae_config)
        return start, end

    # ---- sampling ------------------------------------------------------------------------------
    def shape_kwargs(self, request) -> dict:
        return {"num_waveforms_per_prompt": request.batch_size}

    def call_kwargs(self, pipe, request):
        kwargs = {self.guidance.argument: request.guidance}
        # Without a negative prompt the pipeline's unconditional branch is all-zero embeddings (what the
        # model was trained to drop to); an empty text would be encoded instead, so pass none.
        if request.negative_prompt.strip() and self.uses_negative_prompt(request):
            kwargs["negative_prompt"] = request.negative_prompt
        start, end = self.audio_window(request, pipe.transformer.config, pipe.vae.config)
        kwargs.update(audio_start_in_s=start, audio_end_in_s=end)
        return kwargs

    def to_comfy_latent(self, pipe, latents, request):
        return latents  # the Oobleck VAE decodes the pipeline's latents as they are

    def latent_fields(self, folder, request) -> dict:
        """ComfyUI's audio LATENT keys, and the samples of the decoded waveform to keep."""
        vae_config = folder.vae_config
        start, end = self.audio_window(request, folder.transformer_config, vae_config)
        rate = self.sample_rate(vae_config)
        # As the pipeline cuts its own waveform: int(seconds * sampling_rate) at both ends.
        return {"type": "audio", "downscale_ratio_temporal": self.hop_length(vae_config),
                "audio_window": [int(start * rate), int(end * rate)], "sample_rate": rate}

    def decode(self, vae, latents):
        return vae.decode(latents.to(vae.dtype)).sample

    # ---- tests ---------------------------------------------------------------------------------
    def tiny_request_overrides(self):
        return {"seconds": 2.0}

    def build_tiny(self):
        from diffusers import AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel, \
            StableAudioPipeline
        from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

        from ...tiny.parts import t5_text_encoder
        from ...tiny.tokenizers import t5_tokenizer

        # The real model's shape at a small scale: 4 heads (2 key/value heads) x 16, a window of 128
        # latents x 32 samples at 800 Hz = 5.12 s, stereo.
        conditioning = 16
        transformer = StableAudioDiTModel(
            sample_size=128, in_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=4,
            num_key_value_attention_heads=2, out_channels=8, cross_attention_dim=64, time_proj_dim=16,
            global_states_input_dim=2 * conditioning, cross_attention_input_dim=conditioning,
        )
        vae = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[4, 8], channel_multiples=[1, 2],
                                 decoder_channels=8, decoder_input_channels=8, audio_channels=2, sampling_rate=800)
        text_encoder = t5_text_encoder()
        projection = StableAudioProjectionModel(text_encoder_dim=text_encoder.config.d_model,
                                                conditioning_dim=conditioning, min_value=0, max_value=512)
        scheduler = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, solver_order=2,
                                                      prediction_type="v_prediction", sigma_data=1.0,
                                                      sigma_schedule="exponential")
        return StableAudioPipeline(vae=vae.eval(), text_encoder=text_encoder, projection_model=projection.eval(),
                                   tokenizer=t5_tokenizer(max_length=64), transformer=transformer.eval(),
                                   scheduler=scheduler)


def register_block_layout() -> None:
    """Tell diffusers' block registry what StableAudioDiTBlock returns (its hidden states alone).

    diffusers registers the blocks its own caches support and not this one; cache hooks read the
    registry to stand in for a block (block_io.py), so the entry is added once, as diffusers words it."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.stable_audio_transformer import StableAudioDiTBlock

    TransformerBlockRegistry._register()
    if StableAudioDiTBlock not in TransformerBlockRegistry._registry:
        TransformerBlockRegistry.register(StableAudioDiTBlock, TransformerBlockMetadata(
            return_hidden_states_index=0, return_encoder_hidden_states_index=None))
