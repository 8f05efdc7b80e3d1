"""Models as the single files ComfyUI users hold (diffusion_models/, text_encoders/, vae/)."""
