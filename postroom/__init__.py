"""postroom: generated wire protocol lives in postroom.v1 (do not edit, run `make proto`)."""
