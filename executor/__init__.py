"""The service: HTTP faces, registries and result shaping. It never runs user code itself."""
