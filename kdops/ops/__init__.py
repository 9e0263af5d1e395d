"""Public functional API and torch.library registrations, one module per op."""
