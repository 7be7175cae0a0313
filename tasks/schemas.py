"""The Hydra schemas conf/ starts from: each group's YAML files override only what differs from a dataclass.

- task: `base_<name>` for every registered task, its config class's defaults with the variant's
  settings over them (`base_us_nav_state`: `UsNavCfg` with observation.images false); conf/task/<name>.yaml
  starts with `defaults: [base_<name>, _self_]`.
- probe: `base_probe` (`ProbeSpec`); the presets in conf/probe list what differs from its defaults.
- backend: `base_isaaclab` (`IsaacLabCfg` with its name); conf/backend/isaaclab.yaml starts from it.

`python scripts/train.py --cfg job` prints the composed config: every default and every override.
"""

from __future__ import annotations

from sim.backends.isaaclab.config import IsaacLabCfg
from sim.config import schema, store_schemas
from sim.resources import register_resolvers
from sim.ultrasound.probe import ProbeSpec
from tasks import registry


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore and register the resolvers conf/ uses (`sim.resources`);
    call before Hydra composes conf/ (the scripts do at import, `policies.workflow.compose_config` before
    composing). Calling it again changes nothing."""
    register_resolvers()
    tasks = {}
    for name in registry.names():
        task = registry.spec(name)
        tasks[f"base_{name}"] = schema(task.config_class, registry.task_config(name, {"name": name}))
    store_schemas(
        {
            "task": tasks,
            "probe": {"base_probe": schema(ProbeSpec)},
            "backend": {"base_isaaclab": schema(IsaacLabCfg, {"name": "isaaclab"})},
        }
    )
