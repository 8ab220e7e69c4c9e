"""Not code: the YAML configs, a package so that a wheel carries them as resnet_detect/configs
(setup.cfg), where the library reads its defaults (configs/*/base_*.yaml) outside the
repository."""
