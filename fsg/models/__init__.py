"""What a trained model is: its metadata, fsg model files, importers of public checkpoints, and the `Denoiser`
built from them. Knows processes and networks, never methods."""
