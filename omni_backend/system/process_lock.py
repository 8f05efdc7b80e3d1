"""One re-entrant lock for the whole process, around everything that patches torch or a class globally.

Why: building a model and loading a LoRA adapter run inside the libraries' context managers that
change process-wide state while they last: accelerate's and peft's `init_empty_weights` replace
`torch.nn.Module.register_parameter` (new parameters go to the meta device), diffusers' and
transformers' `no_init_weights` replace `torch.nn.init`'s functions, transformers sets torch's default
dtype, and cache-dit patches the pipeline's and the transformer's classes. A model built in another
thread meanwhile goes through the replacement (peft's turned transformers' parameters into
`TypeError: Parameter.__new__() got an unexpected keyword argument '_is_hf_initialized'`), and two such
context managers interleaved restore each other's replacement, so every later load in the process
failed with "Unsupported device type 'meta'". A run reads the same state (the default dtype of the
scheduler's tensors, the patched classes) and loads its LoRA adapters halfway through, so a readers-
writer split would have to upgrade a reader to a writer mid-run (two runs doing so wait on each other
forever). Hence one lock: in-process loads, runs and decodes go one at a time, whichever engine or
thread asks, and a nested section of the same thread (an adapter load inside a run, a load inside
`Engine.loaded` inside a run) passes through.

It cannot deadlock with the worker group: workers are separate interpreters with their own lock, and
the host holds this one only for work it does itself, never while it waits on its workers. ComfyUI
runs one prompt at a time, so there the lock is never contended and costs one acquire and a snapshot
of about thirty attributes per outermost section (~0.1 ms, against seconds for a run).

Should a patch still be left in place (a library's context manager that raised before it restored,
or code outside this lock that patched meanwhile), the outermost holder finds it changed on release,
puts back what it saw on entry and logs it: the process never stays broken.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

log = logging.getLogger("omni_diffusion")
_LOCK = threading.RLock()
_depth = 0  # how many sections the owning thread holds (only the owner reads or writes it)
_entry_state: dict | None = None

# accelerate's and peft's init_on_device(include_buffers=True) replace the first four; transformers'
# meta_device_safe_creation_ops replaces linspace.
_TENSOR_CONSTRUCTORS = ("empty", "zeros", "ones", "full", "linspace")
# Modules that import torch.nn.init's functions by name, which transformers' no_init_weights patches too.
_INIT_USERS = ("torch.nn.init", "torch.nn.modules.activation", "torch.nn.modules.transformer",
               "torch.nn.modules.linear", "torch.nn.modules.loss", "torch.nn.modules.batchnorm",
               "torch.nn.modules.conv", "torch.nn.modules.normalization", "torch.nn.modules.rnn",
               "torch.nn.modules.sparse")


@contextlib.contextmanager
def process_lock():
    """Hold the process-wide lock; on leaving the outermost section, undo any global patch left behind."""
    global _depth, _entry_state
    with _LOCK:
        if _depth == 0:
            _entry_state = _global_state()
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                state, _entry_state = _entry_state, None
                _restore(state)


def _global_state() -> dict:
    """(owner, attribute) -> value for every process-wide thing a load or a run may patch."""
    import torch

    state = {(torch.nn.Module, name): getattr(torch.nn.Module, name) for name in ("register_parameter",
                                                                              "register_buffer")}
    state.update({(torch, name): getattr(torch, name) for name in _TENSOR_CONSTRUCTORS})
    init_functions = {name for name in vars(torch.nn.init) if name.endswith("_") and not name.startswith("_")}
    for module in filter(None, map(sys.modules.get, _INIT_USERS)):
        state.update({(module, name): value for name, value in vars(module).items() if name in init_functions})
    transformers_models = sys.modules.get("transformers.modeling_utils")
    if transformers_models is not None:  # its no_init_weights and no_tie_weights patch the base class
        model = transformers_models.PreTrainedModel
        state.update({(model, name): model.__dict__[name] for name in ("init_weights", "tie_weights")
                      if name in model.__dict__})
    state[("torch", "default_dtype")] = torch.get_default_dtype()
    state[("torch", "default_device")] = torch.get_default_device()
    return state


def _restore(state: dict) -> None:
    import torch

    changed = []
    for (owner, name), value in state.items():
        if owner == "torch":
            current = torch.get_default_dtype() if name == "default_dtype" else torch.get_default_device()
            if current != value:
                changed.append(f"torch's {name.replace('_', ' ')} ({current})")
                if name == "default_dtype":
                    torch.set_default_dtype(value)
                else:  # None: no device context at all, as before anything set one
                    torch.set_default_device(None if value == torch.device("cpu") else value)
        elif getattr(owner, name, None) is not value:
            changed.append(f"{getattr(owner, '__name__', owner)}.{name}")
            setattr(owner, name, value)
    if changed:
        log.warning("a model load or run left process-wide patches in place; restored: %s", ", ".join(changed))
