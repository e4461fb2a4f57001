"""Files: atomic writes, fsg model files and training states (safetensors, torch), YAML <-> dataclasses, images, npz."""
