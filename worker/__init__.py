"""postroom worker: connects to a coordinator, takes leases and runs jobs on the platforms."""
