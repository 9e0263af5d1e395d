"""Fused Triton kernels, one module per op. Imported lazily (on first use) so that `import kdops`
does not pay for importing Triton, and so TRITON_INTERPRET set by the caller is honoured."""
