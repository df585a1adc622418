"""owuibuild: compile one Open WebUI fleet blueprint into seeds, bundles and Packer templates."""

__version__ = "0.1.0"
