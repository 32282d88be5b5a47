"""The one place in gpufleet that talks to the Kubernetes API."""
