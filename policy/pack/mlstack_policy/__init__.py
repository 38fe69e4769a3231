"""mlstack's CrossGuard policies: one module per concern, `pack` puts them together."""
