"""ComfyUI AUDIO dicts <-> FLAC files, for the headless Save Audio / Preview Audio.

ComfyUI's Save Audio encodes FLAC with PyAV (FFmpeg, tens of MB); headless we use soundfile
(libsndfile, about 1 MB), which writes the same kind of file: FLAC, 24-bit here, one file per batch
entry, named PREFIX_00001_.flac. Samples are clipped to [-1, 1] first (a VAE may overshoot; PCM has
no room past full scale). The prompt/workflow tags ComfyUI adds are left out: libsndfile writes only
its fixed set of text fields.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OmniInputError

SUFFIX = ".flac"


def check_audio(name: str, audio) -> tuple:
    """(waveform [B, C, T] float tensor, sample rate) of a ComfyUI AUDIO, or an error naming `name`."""
    import torch

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise OmniInputError(name, type(audio).__name__, "expected ComfyUI AUDIO ({'waveform', 'sample_rate'})",
                             "connect the audio output of Omni VAE Decode (or Load Audio)")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3 or not waveform.is_floating_point():
        raise OmniInputError(name, getattr(waveform, "shape", type(waveform).__name__),
                             "AUDIO's waveform must be a float tensor [batch, channels, samples]",
                             "connect the audio output of Omni VAE Decode")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise OmniInputError(name, rate, "AUDIO's sample_rate must be a positive whole number", "use 44100")
    return waveform, rate


def save_flacs(audio, directory: str | Path, prefix: str) -> list[Path]:
    """Write each waveform of the batch as PREFIX_00001_.flac (ComfyUI's naming), never overwriting."""
    import soundfile

    waveform, rate = check_audio("audio", audio)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    counter = 1 + max((_counter(p, prefix) for p in directory.glob(f"{prefix}_*_{SUFFIX}")), default=0)
    written = []
    for channels in waveform.detach().to("cpu").float().clamp(-1, 1):
        path = directory / f"{prefix}_{counter:05d}_{SUFFIX}"
        soundfile.write(str(path), channels.T.numpy(), rate, format="FLAC", subtype="PCM_24")
        written.append(path)
        counter += 1
    return written


def read_audio(path: str | Path) -> dict:
    """A FLAC/WAV file -> ComfyUI AUDIO with a batch of one (as core Load Audio gives it)."""
    import soundfile
    import torch

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return {"waveform": torch.from_numpy(data.T.copy())[None], "sample_rate": int(rate)}


def _counter(path: Path, prefix: str) -> int:
    try:
        return int(path.name[len(prefix) + 1:].split("_")[0])
    except ValueError:
        return 0
