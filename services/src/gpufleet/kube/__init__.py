"""The one place in gpufleet that talks to the Kubernetes API.

- client.py      `api_client(**auth)`: an ApiClient from the shared auth options
- api.py         `KubeApi` (dict-based calls), `update_node` (read, compute a
                 merge patch, write with resourceVersion, retry on 409)
- taints.py      `merge_taints` — THE taint merge (key+effect matching, ownership
                 in gpufleet.io/owned-taints); used by node_taint, node_quarantine
                 and the health agent
- nodes.py       taint/cordon/label/annotation patches built on the merge
- drain.py       `plan_drain` (pure) and `execute_drain` (Eviction API, PDB retries)
- quarantine.py  quarantine / release, max_quarantined
- diagnostics.py the diagnostics Job and its verdict
- fleet.py       the fleet from ONE LIST of nodes (fleet_health_info)
"""
