"""OpenAPI tool servers: connections, spec loading, conversion to function specs, and calls."""
