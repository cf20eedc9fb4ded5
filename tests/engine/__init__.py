"""The engine with the tiny models in the real LDM layout (tests/support/tiny_models.py): loading, the
registry, generation, samplers against k-diffusion, img2img and hires, extra networks, limits, the built-in model."""
