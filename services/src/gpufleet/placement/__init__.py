"""GPU workload placement: cluster snapshot, filters, strategies, replay.

Where things are:
- model.py         the snapshot (Cluster, Node, Gpu, taints) and the Request being placed
- fleet.py         the snapshot as numpy arrays, updated as decisions are committed
- filters.py       which nodes may take a request, and how many each filter removed
- strategies.py    node scores (formulas in its docstring); fragmentation.py: FGD's measure
- assign.py        which GPUs inside the chosen node (default rule, NVLink-aware)
- engine.py        Placer: filters → strategy → tie-breaks → GPUs
- sources.py       snapshots and requests from files (openb CSV, YAML)
- workloads.py     Pod/Job/Deployment manifests ↔ requests, and what placing writes
- kube.py          the snapshot from the Kubernetes API and the writes (module, CLI)
- replay.py        the openb trace replay protocol; bench.py: decisions/s
"""
