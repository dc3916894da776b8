"""Loading and building the frozen models: diffusion pipelines and text encoders."""
