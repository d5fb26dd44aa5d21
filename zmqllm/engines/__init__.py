"""Model engines: the `Engine` interface (`base`) and its implementations (echo, llama, batched llama)."""
