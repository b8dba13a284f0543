"""Messages and stubs generated from proto/latentserve/v1/generate.proto at install time."""
