"""The repository: object-store backends, packs, the chunk index, manifests, restore points."""
