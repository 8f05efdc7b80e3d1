"""The pack's package list (pyproject.toml holds everything else). The pack folder itself is the package
`omni_diffusion_nodes` (ComfyUI loads it by path), listed by hand; every package under `omni_backend` is
found, so a new family folder (omni_backend/families/<name>/) is installed without an edit here."""

from setuptools import find_packages, setup

PACK_PACKAGES = ("nodes", "graph", "headless", "training")


def packages() -> list[str]:
    return ["omni_diffusion_nodes", *(f"omni_diffusion_nodes.{name}" for name in PACK_PACKAGES),
            "omni_backend", *(f"omni_backend.{name}" for name in find_packages("omni_backend"))]


if __name__ == "__main__":
    setup(packages=packages())
