"""The one place in gpufleet that talks to the Kubernetes API.

- client.py      `api_client(**auth)` / `connect(**auth)`: THE client factory — auth
                 resolved as kubernetes.core does (explicit, K8S_AUTH_*, kubeconfig,
                 in-cluster), a deadline on every request, retries with backoff+jitter
- api.py         `KubeApi` (dict-based calls through one request path: nodes, node
                 status, pods, bindings, jobs, deployments, leases, events, any
                 Resource), `read_modify_write`/`update_node` (guarded by
                 resourceVersion, retry on 409)
- watch.py       `Watch` (list+watch, bookmarks, re-list on 410, per-request
                 deadline), `wait_for` (one object until a condition, no polling)
- taints.py      `merge_taints` — THE taint merge (key+effect matching, ownership
                 in gpufleet.io/owned-taints); used by node_taint, node_quarantine
                 and the health agent
- nodes.py       taint/cordon/label/annotation patches built on the merge
- drain.py       `plan_drain` (pure) and `execute_drain` (Eviction API, PDB retries)
- quarantine.py  quarantine / release, max_quarantined (and their Events)
- validation.py  Kubernetes' own input rules (names, qualified keys, label values,
                 taint effects), checked before any request
- conditions.py  node conditions through the status subresource (GpuHealthy)
- events.py      events.k8s.io/v1 Events regarding nodes
- diagnostics.py the diagnostics Job and its verdict
- fleet.py       the fleet from ONE LIST of nodes (fleet_health_info)
"""
