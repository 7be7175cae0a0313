"""sonolab's commands, one module per command, each with a `main`: the console entry points of an
installed sonolab (`sonolab-train`, `sonolab-play`, ... in pyproject.toml's [project.scripts]) and the
thin scripts/*.py wrappers of a checkout run the same code. The Hydra commands compose the config
folder `sim.resources.conf_dir()` finds, so they run from any folder."""
