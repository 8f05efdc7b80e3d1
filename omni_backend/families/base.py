"""What a model family declares: one subclass per family, registered in `families/__init__.py`.

A family knows how to drive its diffusers pipeline (call arguments, guidance), how to turn the
pipeline's latent output into ComfyUI's convention (raw VAE latents, `[B,C,H,W]` or
`[B,C,T,H,W]` for video) and back into pixels, where its transformer blocks are, and how to build
a tiny random-weight copy of itself for tests. Feature modules ask the family for what they need;
nothing feature-specific is hard-coded elsewhere.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..request import GenerationRequest

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GuidanceStyle:
    """How Sample's single `guidance` input maps onto the pipeline.

    kind: "true_cfg"  - two transformer calls per step (cond, uncond), e.g. Qwen-Image;
          "cfg"       - classifier-free guidance (batched or two calls), e.g. SD3.5, Wan;
          "distilled" - guidance is an embedding input, one call per step, e.g. FLUX.1-dev.
    argument: the pipeline's keyword for it.
    """

    kind: str
    argument: str
    takes_negative_prompt: bool = True


# Tensor-parallel plan style of our own, beside diffusers' "colwise"/"rowwise": column-parallel with
# the output all-gathered, for layers whose whole output every rank uses (modulation vectors).
GATHERED_COLWISE = "colwise_gather"


def embedding_mlp(path: str, first: str = "linear_1", second: str = "linear_2") -> tuple[tuple[str, str], ...]:
    """An embedding MLP (linear, activation, linear) sharded like any MLP: colwise, then rowwise."""
    return ((f"{path}.{first}", "colwise"), (f"{path}.{second}", "rowwise"))


class ModelFamily:
    key: str = ""  # stable id used in specs, workflows and the support matrix
    title: str = ""  # what users call it
    pipeline_classes: tuple[str, ...] = ()  # model_index.json "_class_name" values we accept
    transformer_components: tuple[str, ...] = ("transformer",)
    video: bool = False
    audio: bool = False  # makes a waveform (ComfyUI AUDIO); Sample takes seconds/start, not sizes or images
    guidance: GuidanceStyle = GuidanceStyle("cfg", "guidance_scale")
    pixel_multiple: int = 16  # VAE downsampling x transformer patch size
    cfg_in_separate_calls: bool = False  # cond and uncond are two transformer calls (not one batch)
    default_steps: int = 28
    default_guidance: float = 4.0
    # Conditioning images Sample may pass (image, image2, image3): how many, whether one is required,
    # and whether a last frame (last_image) is taken. Text-only families take none.
    image_inputs: int = 0
    requires_image: bool = False
    takes_last_image: bool = False
    # The option groups (options.py) the family takes beyond Sample's shared inputs: each is a node
    # connected to Sample's options input. An option of another group is refused by name.
    option_groups: tuple = ()
    # Layered output (Qwen-Image-Layered): the LATENT holds `layers + 1` frames on the frame axis
    # ([B, C, F, H, W] like video) and the decode gives RGBA layers, ComfyUI IMAGE + MASK.
    layered: bool = False
    # Whether the pipeline takes width and height (LongCat-Image-Edit decides them from its image).
    takes_output_size: bool = True
    # The shipped workflow of the family (workflows/<key>.json, written by headless/recipes.py): the
    # real checkpoint's folder name under models/diffusers, and Sample settings that differ from the
    # recipe's defaults (a single-GPU size, the usual steps and guidance).
    example_model: str = ""
    example_sample: dict = {}
    example_options: dict = {}  # settings of the family's option node in that workflow
    example_prompt: str = "a cat sitting on a windowsill at sunset, detailed photo"

    # ---- loading -------------------------------------------------------------------------
    def claims(self, model_index: dict, folder: Path | None = None) -> bool:
        """Whether a folder of one of `pipeline_classes` is this family (only asked when several
        families share the class; decided by the folder's configs, never by its name)."""
        return True

    # Families whose folders (and files) this one's `claims` sets apart: where both claim a folder, this
    # one wins, so a new family that refines an older one changes nothing in the older one.
    refines: tuple[str, ...] = ()

    def pipeline_class(self, class_name: str):
        return getattr(importlib.import_module("diffusers"), class_name)

    def transformers(self, pipe) -> list[tuple[str, Any]]:
        """(component name, module) for every denoiser the pipeline holds (Wan A14B has two)."""
        found = []
        for name in self.transformer_components:
            module = getattr(pipe, name, None)
            if module is not None:
                found.append((name, module))
        return found

    def block_lists(self, transformer) -> list[tuple[str, Any]]:
        """(attribute, nn.ModuleList) of the transformer's repeated blocks, in execution order."""
        raise NotImplementedError

    # Children of a block whose linears FP8 quantizes (w8a8 where chosen): attention and MLP.
    fp8_block_parts: tuple[str, ...] = ("attn", "attn1", "attn2", "attention", "ff", "ff_context", "img_mlp",
                                        "txt_mlp", "ffn", "feed_forward")
    # Children of a block that compute its modulation (AdaLN shift/scale/gate from the timestep), and
    # modulation linears outside the blocks that all blocks share (FLUX.2, Wan): FP8 weight-only. Norms,
    # embeddings, input/output projections and the final AdaLN stay in high precision
    # (memory/fp8_layers.py says why).
    fp8_modulation_parts: tuple[str, ...] = ("img_mod", "txt_mod", "norm1", "norm1_context", "norm",
                                             "adaLN_modulation")
    fp8_shared_modulation: tuple[str, ...] = ()

    def attention_heads(self, transformer_config: dict) -> int:
        return int(transformer_config["num_attention_heads"])

    # ---- sampling ------------------------------------------------------------------------
    def load_kwargs(self, folder) -> dict:
        """Extra keyword arguments for the pipeline's from_pretrained (e.g. a component built in memory)."""
        return {}

    def call_context(self, folder, request: GenerationRequest):
        """A context the pipeline call runs in, from the model folder (a ModelFolder); none by default."""
        import contextlib

        return contextlib.nullcontext()

    def call_kwargs(self, pipe, request: GenerationRequest) -> dict:
        """Keyword arguments for `pipe(...)` beyond prompt/steps/size/generator/output_type."""
        kwargs: dict[str, Any] = {self.guidance.argument: request.guidance}
        if self.guidance.takes_negative_prompt and self.uses_negative_prompt(request) and request.positive is None:
            kwargs["negative_prompt"] = request.negative_prompt
        return kwargs

    # ---- prompt embeddings from ComfyUI (CONDITIONING) ----------------------------------------
    # Why this family refuses ComfyUI's text encoding (None: it accepts it). A family accepts it only
    # where ComfyUI's encoder gives what its diffusers pipeline's encode_prompt gives (template, tokens
    # dropped, hidden layer, padding): then the embeddings pass to the pipeline as prompt_embeds.
    conditioning_refusal: str | None = "its prompt encoding has not been compared with ComfyUI's"
    # Longest CONDITIONING taken (None: any). A bidirectional encoder (T5) cut at the pipeline's
    # max_sequence_length encodes every token differently from ComfyUI's uncut encoding; a causal one
    # (Qwen) gives the same first tokens, so the family cuts the embeddings where the pipeline cuts text.
    text_tokens_max: int | None = None

    def text_embedding_width(self, transformer_config: dict) -> int:
        """Width of the text embeddings the transformer takes (the text encoder's hidden size)."""
        return int(transformer_config["joint_attention_dim"])

    def prompt_kwargs(self, pipe, request: GenerationRequest) -> dict:
        """`prompt` for `pipe(...)`, or the embeddings in its place when Sample got CONDITIONING."""
        if request.positive is None:
            return {"prompt": request.prompt}
        import torch

        device = pipe._execution_device
        # The dtype the pipeline's own encode_prompt returns: its text encoder's (the transformer's
        # where that encoder holds FP8 layers or is absent).
        dtype = getattr(getattr(pipe, "text_encoder", None), "dtype", None)
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            dtype = self.transformers(pipe)[0][1].dtype
        kwargs = self.embedding_kwargs(request.positive, device, dtype)
        if request.negative is not None and self.runs_negative_branch(pipe, request):
            negative = self.embedding_kwargs(request.negative, device, dtype)
            kwargs.update({f"negative_{name}": value for name, value in negative.items()})
        return kwargs

    def runs_negative_branch(self, pipe, request: GenerationRequest) -> bool:
        return self.runs_two_branches(pipe, request)

    def embedding_kwargs(self, embedding, device, dtype) -> dict:
        """One TextEmbedding as the pipeline's `prompt_embeds` (and mask, where it takes one); the
        caller prefixes `negative_` for the negative prompt."""
        return {"prompt_embeds": embedding.embeds.to(device, dtype)}

    def shape_kwargs(self, request: GenerationRequest) -> dict:
        """The pipeline's size and batch arguments (no size where the family decides it itself)."""
        batch = "num_videos_per_prompt" if self.video else "num_images_per_prompt"
        size = {"height": request.height, "width": request.width} if self.takes_output_size else {}
        return {**size, batch: request.batch_size}

    def run_pipeline(self, pipe, kwargs: dict, steps: int):
        """`pipe(**kwargs)` with output_type="latent": the pipeline's latents (a family works around
        a pipeline that cannot return them here)."""
        return pipe(**kwargs)[0]

    def latent_fields(self, folder, request: GenerationRequest) -> dict:
        """Keys of Sample's LATENT besides `samples` that the decode needs (audio: its window), from the
        model folder's configs (`folder` is a ModelFolder: no weights needed)."""
        return {}

    def output_size(self, request: GenerationRequest) -> tuple[int, int]:
        """(width, height) of the image the pipeline makes: Sample's, unless the family decides it from
        the input image (LongCat-Image-Edit)."""
        return request.width, request.height

    def uses_negative_prompt(self, request: GenerationRequest) -> bool:
        return self.guidance.kind in ("true_cfg", "cfg") and request.guidance > 1.0

    def runs_two_branches(self, pipe, request: GenerationRequest) -> bool:
        """True when a step evaluates a positive and a negative branch (true CFG)."""
        return self.guidance.kind in ("true_cfg", "cfg") and request.guidance > 1.0

    def to_comfy_latent(self, pipe, latents: "torch.Tensor", request: GenerationRequest) -> "torch.Tensor":
        """Pipeline output (output_type="latent") -> raw VAE latents in ComfyUI's layout."""
        raise NotImplementedError

    def decode(self, vae, latents: "torch.Tensor") -> "torch.Tensor":
        """Raw VAE latents (ComfyUI layout) -> pixels in [-1, 1], `[B,3,H,W]` or `[B,3,F,H,W]`."""
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0]

    def vae_scale(self, pipe) -> int:
        """Pixels per latent pixel along each spatial axis."""
        return int(getattr(pipe, "vae_scale_factor_spatial", None) or pipe.vae_scale_factor)

    def latent_channels(self, vae_config: dict) -> int:
        return int(vae_config.get("latent_channels") or vae_config.get("z_dim"))

    # ---- parallelism -----------------------------------------------------------------------
    supports_sequence_parallel: bool = True
    supports_tensor_parallel: bool = True

    def cfg_branch(self, kwargs) -> str | None:
        """The CFG branch ("cond"/"uncond") of a transformer call, for pipelines that do not enter a
        `cache_context` per branch (GLM-Image); None: the pipeline's cache_context tells it."""
        return None

    def cfg_deferred_call(self, kwargs):
        """A context-manager factory restoring what a positive call deferred by CFG-parallel needs when
        it runs during the negative call (state the pipeline changed in between)."""
        import contextlib

        return contextlib.nullcontext

    def has_true_cfg(self, model_index: dict) -> bool:
        """Whether guidance > 1 runs a negative branch (what CFG-parallel splits)."""
        return self.guidance.kind in ("true_cfg", "cfg")

    def sequence_parallel_plan(self, transformer) -> dict | None:
        """diffusers `_cp_plan` format: where the sequence is split and gathered (None: no SP)."""
        return getattr(transformer, "_cp_plan", None)

    def tensor_parallel_plan(self, transformer) -> dict | None:
        """diffusers `_tp_plan` format: which linears are column/row sharded (None: no TP), with the
        family's `tensor_parallel_extras` added."""
        plan = getattr(transformer, "_tp_plan", None)
        return None if plan is None else {**plan, **dict(self.tensor_parallel_extras)}

    # What TP shards beyond diffusers' attention/MLP plan, so that no large layer sits whole on every
    # rank: the blocks' modulation linears and the final AdaLN's, column-parallel with the output
    # gathered (GATHERED_COLWISE: the modulation vector is one row per sample, so gathering it costs next
    # to nothing), and the timestep/text embedding MLPs as a colwise + rowwise pair. (module glob, style)
    tensor_parallel_extras: tuple[tuple[str, object], ...] = ()

    # Fix-ups once the linears hold shards: RMSNorms over sharded features (module globs) become
    # sharded norms; attention modules whose processors reshape by `attn.heads` get the local head
    # count (diffusers' Qwen-Image and FLUX processors reshape by head_dim and need neither).
    tensor_parallel_sharded_norms: tuple[str, ...] = ()
    tensor_parallel_divides_heads: bool = False

    def tensor_parallel_widths(self, transformer_config: dict) -> dict[str, int]:
        """What tensor parallelism splits, by name: every value must divide by the TP degree."""
        heads = self.attention_heads(transformer_config)
        head_dim = int(transformer_config.get("attention_head_dim", 0) or 0)
        widths = {"attention heads": heads}
        if head_dim:
            widths["MLP width"] = 4 * heads * head_dim
        return widths

    # ---- a stage before the denoising loop ----------------------------------------------------
    def prior_stage(self, pipe):
        """The module whose forward calls make a stage before denoising (GLM-Image's autoregressive
        model, one call per generated token), for progress and Cancel; None where there is none."""
        return None

    def prior_stage_calls(self, request: GenerationRequest) -> int:
        """How many forward calls that stage makes for `request`."""
        return 0

    # ---- caches ----------------------------------------------------------------------------
    def cache_dit_refusal(self, request: GenerationRequest) -> str | None:
        """Why Cache-DiT cannot run this request (None: it can)."""
        return None

    # TeaCache: polynomial rescaling the relative L1 change of the first block's modulated input
    # (highest order first). None means the family has no extractor and TeaCache is refused.
    teacache_coefficients: tuple[float, ...] | None = None

    def teacache_modulated_input(self, block, args, kwargs):
        """The first block's modulated input for this call (what TeaCache compares across steps)."""
        raise NotImplementedError

    # LoRA: diffusers' loader mixin on the pipeline; where a pipeline has none, the components the LoRA
    # feature loads adapters into with peft itself.
    peft_lora_components: tuple[str, ...] = ()

    def block_counts(self, transformer_config: dict) -> list[int]:
        """Blocks per block list, read from the config (no weights needed)."""
        return [int(transformer_config["num_layers"])]

    # ---- tests ---------------------------------------------------------------------------
    def build_tiny(self):
        """A tiny random-weight pipeline of the real architecture (eval mode, float32)."""
        raise NotImplementedError

    def make_tiny(self, directory: str | Path) -> Path:
        import torch

        torch.manual_seed(0)
        pipe = self.build_tiny()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(directory, safe_serialization=True)
        return directory

    def tiny_request_overrides(self) -> dict:
        """Sample settings that make sense for the tiny copy (e.g. a short video)."""
        return {}
