from .config import CompileConfig

__all__ = ["CompileConfig"]
