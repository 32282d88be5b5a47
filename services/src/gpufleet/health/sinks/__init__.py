"""Where the health agent publishes a verdict.

- publication.py  what is published: labels, annotations, the per-GPU inventory (pure)
- kube.py         the Kubernetes node: labels, annotations and the fence taint, one GET and at most one PATCH
- state_file.py   the local state file /var/lib/gpufleet/health.json (atomic), read by
                  `gpufleet health status`
"""
