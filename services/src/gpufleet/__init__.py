"""gpufleet: node services for GPU clusters built by the gpufleet.cluster collection."""

__version__ = "0.1.0"
