"""Reading a single file costs the memory the model keeps, not more (weights_file.read_tensors): tensors
kept as stored are views of the memory-mapped file; tensors that change dtype are read one at a time.

Each case runs in a fresh process, whose peak resident memory (VmHWM, reset just before) is read after the
read, against its resident memory before it: the growth must stay within 1.10 x the bytes the returned tensors hold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

MIB = 1 << 20
SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from omni_backend.single_file.stored_fp8 import StoredFP8
    from omni_backend.single_file.weights_file import inspect_weights_file, read_tensors

    def resident(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    path, dtype, keep_fp8 = sys.argv[1], getattr(torch, sys.argv[2]), sys.argv[3] == "1"
    file = inspect_weights_file(path, "diffusion_model")
    with open("/proc/self/clear_refs", "w") as reset:  # the peak restarts from here (Linux: "5")
        reset.write("5")
    before = resident("VmRSS:")
    tensors = read_tensors(file, dtype, fp8=StoredFP8() if keep_fp8 else None)
    kept = sum(t.numel() * t.element_size() for t in tensors.values())
    for t in tensors.values():  # one byte of every page, so that mapped pages are resident too
        int(t.reshape(-1).view(torch.uint8)[::4096].sum())
    print(json.dumps({"growth": resident("VmHWM:") - before, "kept": kept}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("stored,wanted,keep_fp8", [
    (torch.bfloat16, "float32", False),  # converted on reading: one tensor's buffer at a time
    (torch.bfloat16, "bfloat16", False),  # kept as stored: views of the mapped file
    (torch.float8_e4m3fn, "bfloat16", True),  # FP8 kept as stored
], ids=["bf16-read-as-fp32", "bf16-kept", "fp8-kept"])
def test_reading_grows_memory_by_what_is_kept(tmp_path, stored, wanted, keep_fp8):
    generator = torch.Generator().manual_seed(0)
    weights = {f"blocks.{i}.attn.to_q.weight": (torch.randn(2048, 4096, generator=generator) * 0.02).to(stored)
               for i in range(12)}  # 96 M values: 192 MiB in bf16, 96 MiB in fp8
    path = tmp_path / "dit.safetensors"
    safetensors.torch.save_file(weights, path)
    del weights
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path), wanted, "1" if keep_fp8 else "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["growth"] <= 1.10 * measured["kept"], (
        f"reading grew memory by {measured['growth'] / MIB:.0f} MiB for {measured['kept'] / MIB:.0f} MiB kept")


def test_chunked_reads_give_the_arithmetic_of_one_whole_read(tmp_path, monkeypatch):
    """Chunks far smaller than a tensor (and than one row): every scale kind lands on its own rows."""
    from omni_backend.single_file import weights_file
    from omni_backend.single_file.weights_file import inspect_weights_file, read_tensors

    generator = torch.Generator().manual_seed(1)
    fp8 = {name: torch.randn(shape, generator=generator).to(torch.float8_e4m3fn)
           for name, shape in (("a.weight", (37, 19)), ("b.weight", (5, 300)), ("c.weight", (23,)))}
    scales = {"a.weight": torch.rand(37, 1, generator=generator) + 0.5, "b.weight": torch.tensor(0.25),
              "c.weight": torch.rand(23, generator=generator) + 0.5}
    plain = torch.randn(41, 7, generator=generator).to(torch.bfloat16)
    path = tmp_path / "scaled.safetensors"
    safetensors.torch.save_file({**fp8, **{k[:-len("weight")] + "scale_weight": v for k, v in scales.items()},
                                 "d.weight": plain}, path)
    for chunk in (64, 1 << 20):
        monkeypatch.setattr(weights_file, "READ_CHUNK_BYTES", chunk)
        read = read_tensors(inspect_weights_file(path, "diffusion_model"), torch.float32)
        for key, values in fp8.items():
            scale = scales[key].reshape(-1, 1) if values.dim() == 2 and scales[key].numel() > 1 else scales[key]
            assert torch.equal(read[key], values.float() * scale), (chunk, key)
        assert torch.equal(read["d.weight"], plain.float())
