"""One run in this process: the denoising loop around the family's pipeline (sampling), the runner
that loads, runs and decodes for the engine and for each worker rank (runner), the decode of a
LATENT to IMAGE or AUDIO (decode, vae_tiling), and ComfyUI's prompt embeddings (conditioning)."""
