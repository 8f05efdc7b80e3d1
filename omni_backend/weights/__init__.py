"""A model's weights: a diffusers folder checked without reading a weight (model_folder), its
pipeline loaded from local safetensors only (loading), and loaded pipelines kept by what decides
their weights (pipeline_cache). ComfyUI's single files are read by `single_file/`."""
