"""Generated from protos/postroom/v1 by `make proto`."""
