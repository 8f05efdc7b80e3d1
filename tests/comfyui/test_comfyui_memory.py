"""ComfyUI's memory management reaches the pack's models (nodes/comfy_bridge.py, on_free_memory): when it
frees memory for a model of its own and its own models do not make enough room, ours are unloaded; when
they do, ours stay. Run inside a real ComfyUI's interpreter, on its own `comfy.model_management`.

Part of the real-ComfyUI tier (tests/comfyui_host.py): runs with COMFYUI_PATH, skipped without.
"""

from __future__ import annotations

import json

from comfyui_host import tier

pytestmark = tier

COMFY_SIDE = """
import json, sys, torch
folder = sys.argv[1]
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI's options, read as its main.py has them read
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_management as mm
import omni_diffusion_nodes  # as ComfyUI imports the pack: its hooks go into ComfyUI's model management
from omni_backend.engine import default_engine
from omni_backend.spec import ModelSpec

engine, cpu = default_engine(), torch.device("cpu")
spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
seen = {"to_load_before": engine.bytes_to_load(spec)}
engine.loaded(spec)
seen["to_load_after"] = engine.bytes_to_load(spec)
mm.free_memory(1 << 20, cpu)  # room enough already: ComfyUI frees nothing, ours stays
seen["loaded_after_small_need"] = len(engine.runner.pipelines)
mm.free_memory(mm.get_free_memory(cpu) + (1 << 40), cpu)  # more than there is: ours goes too
seen["loaded_after_large_need"] = len(engine.runner.pipelines)
seen["to_load_again"] = engine.bytes_to_load(spec)
print(json.dumps(seen))
"""


def test_comfyuis_memory_management_unloads_our_model_when_it_needs_the_room(tmp_path, comfyui_code, models_dir):
    script = tmp_path / "free_memory.py"
    script.write_text(COMFY_SIDE)
    done = comfyui_code.run(script, str(models_dir / "diffusers" / "qwen-image"))
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["to_load_before"] > 0 and seen["to_load_after"] == 0
    assert seen["loaded_after_small_need"] == 1, "ComfyUI had room: our model stays"
    assert seen["loaded_after_large_need"] == 0, "ComfyUI needed more than its own models free: ours went"
    assert seen["to_load_again"] == seen["to_load_before"]
