"""Parallel Config: the multi-process layout carried by OMNI_MODEL.

world size = cfg_parallel x ring_degree x ulysses_degree x tensor_parallel. Ranks are laid out
on a (cfg, ring, ulysses, tp) grid, tp innermost and cfg outermost (vLLM-Omni's order): Ulysses
peers sit on neighbouring ranks and ring peers are strided, so the chattiest groups stay closest.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from ..errors import OmniInputError
from ..rules.checks import whole_number
from ..rules.compat import alternative, define_rule, ways_out

# "{layout}" is the Parallel Config's describe(), e.g. "2 ranks (ulysses 2)"; "{instead}" is the way out
# this model and machine accept (ParallelConfig.instead and the checks in problems()).
NOT_ENOUGH_DEVICES = define_rule(
    "parallel.devices", ("parallel", "machine"),
    "every local rank needs a device (GPUs; on a machine without GPUs, CPU processes)",
    first="Parallel Config ({layout})", second="this machine",
    reason="it needs {needed} local ranks but {available} devices are available",
    fix="lower the degrees, list devices explicitly, or add remote ranks")
NO_SEQUENCE_PARALLEL_PLAN = define_rule(
    "parallel.sequence_plan", ("sequence_parallel", "family"),
    "the family has no sequence-parallel plan (where the sequence is split and gathered)",
    first="Parallel Config ({layout})", second="{family}", reason="this model has no sequence-parallel plan",
    fix="{instead}")
NO_TENSOR_PARALLEL_PLAN = define_rule(
    "parallel.tensor_plan", ("tensor_parallel", "family"),
    "the family has no tensor-parallel plan (which linears are split across ranks)",
    first="Parallel Config ({layout})", second="{family}", reason="this model has no tensor-parallel plan",
    fix="{instead}")
UNEVEN_TENSOR_PARALLEL = define_rule(
    "parallel.tensor_widths", ("tensor_parallel", "family"),
    "tensor parallelism splits heads and MLP widths evenly: the degree must divide them",
    first="Parallel Config ({layout})", second="{family}",
    reason="tensor_parallel {degree} does not divide its {uneven}", fix="{instead}")
UNEVEN_HEADS = define_rule(
    "parallel.heads", ("sequence_parallel", "family"),
    "Ulysses and tensor parallelism split attention heads: their product must divide the head count",
    first="Parallel Config ({layout})", second="{family}",
    reason="its {heads} attention heads do not divide by ulysses_degree x tensor_parallel = {split}",
    fix="{instead}")
NO_NEGATIVE_BRANCH = define_rule(
    "parallel.cfg_branch", ("cfg_parallel", "family"),
    "CFG-parallel splits the positive and negative branch; distilled guidance runs one pass",
    first="Parallel Config ({layout})", second="{family}",
    reason="the model runs no negative branch (its guidance is distilled into one pass), so there is nothing "
           "to split",
    fix="{instead}")

NO_VAE_PATCHES = define_rule(
    "parallel.vae_patches_audio", ("vae_patch_parallel", "family"),
    "VAE patch parallel splits a picture's height and width; an audio latent is one line of time steps",
    first="Parallel Config ({layout})", second="{family}",
    reason="its VAE decodes a 1-D waveform latent: there are no image patches to hand out",
    fix="set vae_patch_parallel to 1 (the waveform decodes in one piece)")


ONE_PROCESS = "remove the Parallel Config (this model runs in one process here)"


def number_list(numbers) -> str:
    """[1, 2, 4], written the same way by the browser extension."""
    return "[" + ", ".join(str(n) for n in numbers) + "]"


def tensor_parallel_degrees(family, transformer_config: dict) -> list[int]:
    """The tensor_parallel degrees (2 to 64) that divide everything tensor parallelism splits."""
    widths = family.tensor_parallel_widths(transformer_config).values()
    return [d for d in range(2, 65) if all(w % d == 0 for w in widths)]


def ulysses_degrees(heads: int, tensor_parallel: int = 1) -> list[int]:
    """The ulysses_degree values (from 1) that split `heads` evenly beside `tensor_parallel`."""
    return [d for d in range(1, heads + 1) if heads % (d * tensor_parallel) == 0]


@dataclass(frozen=True)
class ParallelConfig:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: int = 1
    tensor_parallel: int = 1
    vae_patch_parallel: int = 1
    devices: tuple[str, ...] = ()  # one per local rank; empty = automatic (GPUs, else CPU processes)
    remote_ranks: int = 0  # ranks started on other machines with `omni-diffusion worker` (the highest ranks)
    rendezvous: str = ""  # HOST:PORT the ranks meet at; empty = a free port on 127.0.0.1

    label = "Parallel"
    node_title = "Parallel Config"
    RULES = (NOT_ENOUGH_DEVICES, NO_SEQUENCE_PARALLEL_PLAN, NO_TENSOR_PARALLEL_PLAN, UNEVEN_TENSOR_PARALLEL,
             UNEVEN_HEADS, NO_NEGATIVE_BRANCH, NO_VAE_PATCHES)

    def __post_init__(self):
        for name in ("ulysses_degree", "ring_degree", "cfg_parallel", "tensor_parallel", "vae_patch_parallel"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name), 1, 64,
                                                        fix=f"set {name} to 1 or more (at most 64)"))
        object.__setattr__(self, "remote_ranks", whole_number("remote_ranks", self.remote_ranks, 0, 63))
        if not isinstance(self.rendezvous, str):
            raise OmniInputError("rendezvous", self.rendezvous, "must be text", "use HOST:PORT, or empty for local")
        if isinstance(self.devices, str) or not all(isinstance(d, str) for d in self.devices):
            raise OmniInputError("devices", self.devices, "must be a list of device names",
                                 "pass e.g. (\"cuda:0\", \"cuda:1\"), or () for automatic")
        object.__setattr__(self, "devices", tuple(self.devices))
        if self.cfg_parallel not in (1, 2):
            raise OmniInputError("cfg_parallel", self.cfg_parallel, "CFG has two branches to split",
                                 "use 1 (off) or 2")
        if self.remote_ranks < 0 or self.remote_ranks >= self.world_size:
            raise OmniInputError("remote_ranks", self.remote_ranks,
                                 f"must leave rank 0 on this machine (world size {self.world_size})",
                                 f"use 0 to {self.world_size - 1}")
        if self.remote_ranks and not self.rendezvous:
            raise OmniInputError("rendezvous", self.rendezvous, "remote ranks need an address to meet at",
                                 "set HOST:PORT reachable from the other machines (this machine's address)")
        if self.rendezvous:
            rendezvous_address(self.rendezvous)
        for device in self.devices:
            if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
                raise OmniInputError("devices", device, "not a device name", "use cpu or cuda:N, comma-separated")
        if self.devices and len(self.devices) != self.local_ranks:
            raise OmniInputError("devices", ",".join(self.devices),
                                 f"lists {len(self.devices)} devices for {self.local_ranks} local ranks",
                                 f"list exactly {self.local_ranks} devices, or use auto")
        if self.vae_patch_parallel > self.world_size:
            raise OmniInputError("vae_patch_parallel", self.vae_patch_parallel,
                                 f"VAE tiles are decoded by the worker group's ranks, and it has {self.world_size}",
                                 f"use at most {self.world_size}, or raise the other degrees")

    @property
    def sequence_parallel(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def world_size(self) -> int:
        return self.cfg_parallel * self.sequence_parallel * self.tensor_parallel

    @property
    def local_ranks(self) -> int:
        return self.world_size - self.remote_ranks

    def layout_key(self) -> tuple:
        """What decides the worker processes and their process groups (not VAE patching)."""
        return (self.ulysses_degree, self.ring_degree, self.cfg_parallel, self.tensor_parallel, self.devices,
                self.remote_ranks, self.rendezvous)

    def describe(self) -> str:
        parts = [f"{name} {value}" for name, value in (
            ("ulysses", self.ulysses_degree), ("ring", self.ring_degree), ("cfg", self.cfg_parallel),
            ("tp", self.tensor_parallel), ("vae patches", self.vae_patch_parallel)) if value > 1]
        return f"{self.world_size} ranks ({', '.join(parts) or 'no split'})"

    # ---- validation ----------------------------------------------------------------------------
    def problems(self, spec) -> list:
        family, info = spec.family, spec.model_folder
        named = dict(layout=self.describe(), family=family.title)
        found = []
        available = available_local_ranks(self)
        if self.local_ranks > available:
            found.append(NOT_ENOUGH_DEVICES.problem(**named, needed=self.local_ranks, available=available))
        if self.sequence_parallel > 1 and not family.supports_sequence_parallel:
            found.append(self._refused(spec, NO_SEQUENCE_PARALLEL_PLAN, named, "ulysses_degree", "ring_degree"))
        if self.tensor_parallel > 1 and not family.supports_tensor_parallel:
            found.append(self._refused(spec, NO_TENSOR_PARALLEL_PLAN, named, "tensor_parallel"))
        elif self.tensor_parallel > 1:
            widths = family.tensor_parallel_widths(info.transformer_config)
            uneven = {name: width for name, width in widths.items() if width % self.tensor_parallel}
            if uneven:
                shown = ", ".join(f"{name} {width}" for name, width in uneven.items())
                degrees = ways_out(spec, UNEVEN_TENSOR_PARALLEL, {
                    d: alternative(parallel=self.with_degrees(tensor_parallel=d))
                    for d in tensor_parallel_degrees(family, info.transformer_config)})
                if degrees:
                    instead, ways = f"use tensor_parallel in {number_list(degrees)}", degrees
                else:  # no degree divides them all (or fits this machine)
                    instead, ways = self.instead(spec, UNEVEN_TENSOR_PARALLEL, "tensor_parallel")
                found.append(UNEVEN_TENSOR_PARALLEL.problem(**named, degree=self.tensor_parallel, uneven=shown,
                                                            instead=instead, alternatives=ways.values()))
        heads = family.attention_heads(info.transformer_config)
        split = self.ulysses_degree * self.tensor_parallel
        # When tensor_parallel alone does not divide the heads, no ulysses_degree can help: the
        # tensor-parallel rules above say what to change; without a sequence-parallel plan, so does that rule.
        if heads % split and heads % self.tensor_parallel == 0 and family.supports_sequence_parallel:
            degrees = ways_out(spec, UNEVEN_HEADS, {d: alternative(parallel=self.with_degrees(ulysses_degree=d))
                                                    for d in ulysses_degrees(heads, self.tensor_parallel)})
            ring = ways_out(spec, UNEVEN_HEADS, {"ring": alternative(
                parallel=self.with_degrees(ulysses_degree=1, ring_degree=self.sequence_parallel))})
            instead = f"use ulysses_degree in {number_list(degrees)}" + (
                " (or ring_degree, which splits no heads)" if ring else "")
            found.append(UNEVEN_HEADS.problem(**named, heads=heads, split=split, instead=instead,
                                              alternatives=[*degrees.values(), *ring.values()]))
        if self.cfg_parallel > 1 and not family.has_true_cfg(info.model_index):
            found.append(self._refused(spec, NO_NEGATIVE_BRANCH, named, "cfg_parallel"))
        if self.vae_patch_parallel > 1 and family.audio:
            found.append(NO_VAE_PATCHES.problem(
                **named, alternatives=[alternative(parallel=dataclasses.replace(self, vae_patch_parallel=1))]))
        return found

    def _refused(self, spec, rule, named: dict, *degrees: str):
        instead, ways = self.instead(spec, rule, *degrees)
        return rule.problem(**named, instead=instead, alternatives=ways.values())

    def instead(self, spec, rule, *degrees: str) -> tuple[str, dict]:
        """The way out of `rule` that turns these degrees to 1, in words and as {words: Alternative}: the
        rest of this layout when it still splits the work and is accepted, else another parallel method
        this model and machine accept, else one process. Never a method the check refuses here."""
        off = dict.fromkeys(degrees, 1)
        rest = self.with_degrees(**off)
        setting = f"set {' and '.join(name for name in degrees if getattr(self, name) > 1)} to 1"
        if rest.world_size > 1 and (ways := ways_out(spec, rule, {setting: alternative(parallel=rest)})):
            return setting, ways
        methods = {name: degree for name, degree in self._smallest_methods(spec).items()
                   if name not in degrees and getattr(rest, name) == 1}
        ways = ways_out(spec, rule, {f"{name} {d}": alternative(parallel=self.with_degrees(**off, **{name: d}))
                                     for name, d in methods.items()})
        if ways:
            return f"{setting} and use {' or '.join(ways)} instead", ways
        return ONE_PROCESS, {ONE_PROCESS: alternative(parallel=None)}

    @staticmethod
    def _smallest_methods(spec) -> dict[str, int]:
        """Each parallel method at its smallest degree for this model: what a fix offers instead (Ulysses
        where two ranks split the heads, else ring attention, which splits none)."""
        family, config = spec.family, spec.model_folder.transformer_config
        ulysses = [d for d in ulysses_degrees(family.attention_heads(config)) if d > 1]
        tensor = tensor_parallel_degrees(family, config)
        return {**({"ulysses_degree": ulysses[0]} if ulysses else {"ring_degree": 2}),
                **({"tensor_parallel": tensor[0]} if tensor else {}), "cfg_parallel": 2}

    def with_degrees(self, **degrees) -> "ParallelConfig":
        """This layout with other degrees, as a fix offers it: listed devices are cut to the local ranks
        (a list of CPU processes grows with them; any other becomes automatic), and VAE patches and
        remote ranks shrink with the world size."""
        plain = dataclasses.replace(self, **degrees, devices=(), remote_ranks=0, vae_patch_parallel=1)
        remote = min(self.remote_ranks, plain.world_size - 1)
        local = plain.world_size - remote
        if len(self.devices) >= local:
            devices = self.devices[:local]
        else:
            devices = ("cpu",) * local if self.devices and set(self.devices) == {"cpu"} else ()
        return dataclasses.replace(plain, devices=devices, remote_ranks=remote,
                                   vae_patch_parallel=min(self.vae_patch_parallel, plain.world_size))

    # ---- the feature contract (these run inside the worker processes) --------------------------
    def prepare_pipeline(self, pipe, spec) -> None:
        from .runtime import current_context
        from .setup import parallelize_pipeline

        context = current_context()
        if context is not None:  # world size 1 runs the plain pipeline
            parallelize_pipeline(pipe, spec, context)

    @contextlib.contextmanager
    def run_session(self, ctx):
        from .runtime import current_context
        from .session import parallel_run

        context = current_context()
        if context is None:
            yield
            return
        with parallel_run(ctx, context):
            yield


def rendezvous_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port). (Up to 65534: groups used to take PORT + 1 as well.)"""
    host, colon, port = str(text).strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65534:
        raise OmniInputError("rendezvous", text, "not HOST:PORT with a port from 1 to 65534",
                             "use this machine's address as the other machines reach it, e.g. 192.168.1.10:29500")
    return host, int(port)


MAX_CPU_RANKS = 8  # CPU ranks are processes that time-share the cores: useful for testing, not for speed


def available_local_ranks(config) -> int:
    """GPUs on this machine (or the listed ones that exist); CPU processes up to MAX_CPU_RANKS."""
    import torch

    if torch.cuda.is_available() and not all(d == "cpu" for d in config.devices or ("cuda",)):
        count = torch.cuda.device_count()
        if config.devices:
            return len([d for d in config.devices if d == "cpu" or int(d.split(":")[1]) < count])
        return count
    return MAX_CPU_RANKS
