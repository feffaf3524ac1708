"""Real platform clients (one module per platform) on the shared machinery of `base`."""
