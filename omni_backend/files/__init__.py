"""Files in and out: ComfyUI IMAGE <-> PNG (images), AUDIO <-> FLAC (audio_files), and the checked
header of every .safetensors file the pack reads (safetensors_header)."""
