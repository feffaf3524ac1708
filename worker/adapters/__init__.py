"""Platform adapters: the interface (`base`), HTTP boundary helpers and the sandbox adapter."""
