"""buildmatrix: one reproducible, verified, containerized build for on-device LLMs."""

VERSION = "0.1.0"
