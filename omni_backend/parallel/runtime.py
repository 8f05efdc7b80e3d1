"""The distributed context of a worker process: its rank and the process groups of each method.

Set once when a worker joins the group; feature code reads it through `current_context()`, which
is None in the ComfyUI process and in single-process runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ParallelContext:
    rank: int
    world_size: int
    device: Any  # torch.device of this rank
    config: Any  # ParallelConfig
    mesh: Any  # DeviceMesh with dims ("cfg", "ring", "ulysses", "tp")
    groups: dict = field(default_factory=dict)  # "cfg" | "sp" | "ring" | "ulysses" | "tp" | "world" -> group

    def group(self, name: str):
        return self.groups[name]

    def size(self, name: str) -> int:
        import torch.distributed as dist

        return dist.get_world_size(self.groups[name])


_CURRENT: ParallelContext | None = None


def current_context() -> ParallelContext | None:
    return _CURRENT


def cfg_parallel_active() -> bool:
    return _CURRENT is not None and _CURRENT.config.cfg_parallel > 1


def set_current_context(context: ParallelContext | None) -> None:
    global _CURRENT
    _CURRENT = context


def build_context(rank: int, world_size: int, device, config) -> ParallelContext:
    """Process groups for every method on the (cfg, ring, ulysses, tp) grid."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    shape = (config.cfg_parallel, config.ring_degree, config.ulysses_degree, config.tensor_parallel)
    names = ("cfg", "ring", "ulysses", "tp")
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    groups = {name: mesh[name].get_group() for name in names}
    groups["sp"] = mesh["ring", "ulysses"]._flatten("sp").get_group()
    groups["world"] = dist.group.WORLD
    # VAE patch-parallel decodes on the first ranks; every rank must take part in creating the group.
    groups["vae"] = dist.new_group(list(range(config.vae_patch_parallel)))
    return ParallelContext(rank=rank, world_size=world_size, device=device, config=config, mesh=mesh,
                           groups=groups)
