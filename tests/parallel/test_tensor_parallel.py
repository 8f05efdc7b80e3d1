"""Tensor parallelism and VAE patch-parallel decode on 2 (and 4) gloo ranks."""

from __future__ import annotations

import pytest
import torch
from parallel_support import assert_same, request_for, spec_for

from omni_backend.engine import DecodeSettings
from omni_backend.errors import OmniIncompatibleError
from omni_backend.parallel.tensor_parallel import module_glob

TP_FAMILIES = ["qwen-image", "z-image", "flux", "flux2-klein", "wan2.2", "longcat-image"]


def expected_rank_bytes(transformer, plan, degree: int, sharded_norms=()) -> int:
    """Replicated parameters whole, planned linears (gathered column-parallel ones included) and sharded
    norms 1/degree (a row-parallel bias stays whole)."""
    plan = {**plan, **{norm: "colwise" for norm in sharded_norms}}
    patterns = [(module_glob(k), v) for k, v in plan.items()]
    total = 0
    for name, parameter in transformer.named_parameters():
        module_name, _, kind = name.rpartition(".")
        style = next((v for p, v in patterns if p.match(module_name)), None)
        size = parameter.numel() * parameter.element_size()
        row_bias = kind == "bias" and (style == "rowwise" or type(style).__name__ == "PackedRowwiseParallel")
        total += size if style is None or row_bias else size // degree
    return total


@pytest.mark.slow
def test_tensor_parallel_equals_single_process_and_shards_weights(models_dir, engine):
    for family in TP_FAMILIES:
        request = request_for(family)
        single_spec = spec_for(models_dir, family)
        single = engine.generate(single_spec, request).latents
        result = engine.generate(spec_for(models_dir, family, tensor_parallel=2), request)
        assert_same(result.latents, single)

        pipe = engine.loaded(single_spec).pipe
        transformers = [t for _n, t in single_spec.family.transformers(pipe)]
        full = sum(p.numel() * p.element_size() for t in transformers for p in t.parameters())
        family_spec = single_spec.family
        expected = sum(expected_rank_bytes(t, family_spec.tensor_parallel_plan(t), 2,
                                           family_spec.tensor_parallel_sharded_norms) for t in transformers)
        per_rank = result.report.sections["Parallel"]["rank_weight_bytes"]
        assert per_rank == [expected, expected], family
        print(f"{family}: rank DiT bytes {expected / full:.3f} of the full model")
        assert expected / full <= 0.55, "modulation and embedding MLPs are sharded too"


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(tensor_parallel=2, ulysses_degree=2), dict(tensor_parallel=2, cfg_parallel=2)],
                         ids=["tp2xulysses2", "tp2xcfg2"])
def test_tensor_parallel_combines_with_other_methods(models_dir, engine, layout):
    request = request_for("qwen-image")
    single = engine.generate(spec_for(models_dir, "qwen-image"), request).latents
    spec = spec_for(models_dir, "qwen-image", devices=("cpu",) * 4, **layout)
    assert_same(engine.generate(spec, request).latents, single)


@pytest.mark.parametrize("layout, family, fragment", [
    (dict(tensor_parallel=3, devices=("cpu",) * 3), "qwen-image", "tensor_parallel in [2, 4]"),
    (dict(tensor_parallel=2), "sd3", "no tensor-parallel plan"),
])
def test_impossible_tensor_parallel_is_refused(models_dir, layout, family, fragment):
    with pytest.raises(OmniIncompatibleError) as info:
        spec_for(models_dir, family, **layout)
    assert fragment in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("family, width, height", [("z-image", 208, 144), ("qwen-image", 176, 112),
                                                    ("wan2.2", 144, 96), ("longcat-image", 208, 144)])
def test_patch_parallel_decode_equals_one_device_tiled_decode(models_dir, engine, family, width, height):
    """Odd latent sizes (26x18, 22x14, 18x12) whose tiles do not split evenly between the ranks."""
    single_spec = spec_for(models_dir, family)
    latents = engine.generate(single_spec, request_for(family, width=width, height=height, guidance=1.0)).latents
    settings = DecodeSettings(tile_size=64, tile_overlap=16)
    one_device, _ = engine.decode_with_report(single_spec, latents, settings)
    untiled = engine.decode(single_spec, latents)
    spec = spec_for(models_dir, family, ulysses_degree=2, vae_patch_parallel=2)
    parallel, report = engine.decode_with_report(spec, latents, settings)
    assert parallel.shape == untiled.shape
    assert (parallel - one_device).abs().max() <= 1e-5
    psnr = 10 * torch.log10(1 / ((parallel - untiled) ** 2).mean())
    print(f"{family}: patch-parallel vs untiled decode {psnr:.1f} dB; {report.text()}")
    assert psnr > 15, "tiles are blended: the image stays close to the untiled decode"
    vae = report.sections["VAE"]
    assert len(vae["peak_bytes"]) == 2 and vae["tiles"] > 2


def test_patches_cover_the_latent_once_and_balance_across_ranks():
    from omni_backend.parallel.vae_patch import assign_tiles, plan_patches
    from omni_backend.run.vae_tiling import plan_tiles

    for height, width, ranks in [(8, 8, 2), (32, 32, 2), (18, 26, 3), (40, 24, 4), (3, 40, 2)]:
        patches = plan_patches(height, width, ranks)
        assert len(patches) >= min(ranks, height * width)
        covered = torch.zeros(height, width, dtype=torch.int64)
        for patch in patches:
            covered[patch.core.y0:patch.core.y1, patch.core.x0:patch.core.x1] += 1
            halo, core = patch.halo, patch.core
            assert halo.y0 <= core.y0 < core.y1 <= halo.y1 and halo.x0 <= core.x0 < core.x1 <= halo.x1
            assert 0 <= halo.y0 and halo.y1 <= height and 0 <= halo.x0 and halo.x1 <= width
        assert (covered == 1).all(), "every latent pixel belongs to exactly one core"
        if min(height, width) >= 8:
            assert max(p.area for p in patches) <= 0.6 * height * width, "a patch with its halo stays small"
        shares = assign_tiles(patches, ranks)
        assert sorted(i for share in shares for i in share) == list(range(len(patches)))
        assert all(shares), "every rank gets work"
    uneven = plan_tiles(26, 18, 8, 2)
    loads = [sum(uneven[i].area for i in share) for share in assign_tiles(uneven, 3)]
    assert max(loads) - min(loads) <= max(t.area for t in uneven)


@pytest.fixture(scope="module")
def reference_spec():
    from omni_backend.reference import model_path
    from omni_backend.spec import ModelSpec

    return ModelSpec.from_folder(str(model_path()), dtype="fp32", device="cpu")


@pytest.mark.slow
def test_patch_decode_of_the_reference_vae_matches_the_whole_decode(engine, reference_spec):
    """The trained VAE (random weights would not show what halos do to a real image): >= 35 dB against
    the whole decode at the model's size (64 px) and at 4x it (256 px), each rank's peak <= 0.6 of one
    device's."""
    from omni_backend.parallel.config import ParallelConfig
    from omni_diffusion_nodes.training.vae_training import scene_latents

    vae = engine.loaded(reference_spec).pipe.vae
    spec = reference_spec.replace(parallel=ParallelConfig(cfg_parallel=2, vae_patch_parallel=2))
    for size in (64, 256):
        latents = scene_latents(vae, size, count=1, seed=size)
        whole, whole_report = engine.decode_with_report(reference_spec, latents)
        patched, report = engine.decode_with_report(spec, latents)
        psnr = float(10 * torch.log10(1 / ((patched - whole) ** 2).mean()))
        peaks, one_peak = report.sections["VAE"]["peak_bytes"], whole_report.sections["VAE"]["peak_bytes"][0]
        print(f"{size} px: {psnr:.1f} dB, rank peaks {[round(p / one_peak, 3) for p in peaks]} of one device's")
        assert patched.shape == whole.shape and psnr >= 35, (size, psnr)
        assert len(peaks) == 2 and max(peaks) <= 0.6 * one_peak, (size, peaks, one_peak)


@pytest.mark.slow
def test_one_vae_rank_means_only_rank_0_decodes(reference_spec):
    """With vae_patch_parallel 1 on a 2-rank layout, rank 1's runner returns at once, decoding nothing."""
    from omni_backend.parallel.config import ParallelConfig
    from omni_backend.parallel.runtime import ParallelContext, set_current_context
    from omni_diffusion_nodes.training.vae_training import scene_latents
    from omni_backend.run.runner import DecodeSettings, LocalRunner

    runner = LocalRunner()
    config = ParallelConfig(cfg_parallel=2)
    spec = reference_spec.replace(parallel=config)
    vae = runner.loaded(spec).pipe.vae  # loaded as a single process: the context below only names the rank
    latents = scene_latents(vae, 64, count=1)
    calls = []
    handle = vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        for rank, expected_calls in ((1, 0), (0, 1)):
            set_current_context(ParallelContext(rank=rank, world_size=2, device=torch.device("cpu"), config=config,
                                                mesh=None))
            try:
                pixels, _report = runner.decode(spec, latents, DecodeSettings())
            finally:
                set_current_context(None)
            assert len(calls) == expected_calls and (pixels is None) == (rank == 1), rank
    finally:
        handle.remove()
        runner.unload_all()
