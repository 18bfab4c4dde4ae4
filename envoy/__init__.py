"""Data only: the Envoy configuration template (envoy.yaml) that `aster edge`
renders; shipped in the Python package as `aster.envoy`."""
