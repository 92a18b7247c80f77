"""Model architectures shared by training (which fits them) and the runtime (which runs
them). Weights travel only inside the avatar bundle, as safetensors."""
