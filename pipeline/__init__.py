"""vmpump: image-level backup of vSphere VMs to object storage, as a Ray pipeline."""

__version__ = "0.1.0"
