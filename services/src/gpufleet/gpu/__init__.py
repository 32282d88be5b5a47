"""GPU device backends: nvml (nvidia-ml-py) and simulated."""
