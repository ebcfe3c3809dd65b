"""Hand-written kernels called from the models as XLA custom calls (``jax.ffi``)."""
