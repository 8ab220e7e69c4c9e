"""Not code: the YAML configs, a package so that a wheel carries them beside the library,
which reads its defaults (configs/*/base_*.yaml) from here."""
