"""GPU workload placement: cluster snapshot, filters, strategies, replay."""
