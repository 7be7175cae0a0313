"""sonolab's tasks as Isaac Lab environments, for Isaac Lab's own workflows:

    isaaclab train --task Sonolab-UsNavState-v0 --num_envs 64 --device cpu agent.device=cpu
    isaaclab play --task Sonolab-UsNavState-v0 --num_envs 4 --device cpu agent.device=cpu --checkpoint <model_*.pt>
    isaaclab train --task Sonolab-UsNav-v0 'env.overrides=["patient=totalseg_example","task.episode_steps=64"]'

`SonolabDirectEnv` is a `DirectRLEnv` whose simulation and scene Isaac Lab creates from the
configs the sonolab Isaac Lab backend describes (`IsaacLabScene.sim_cfg` / `scene_cfg`: the
arm, the patients' bodies, the table, the probe's contact sensor), and whose steps and resets are
the sonolab task's (`BatchedEnv.step`: the action, the arm under differential IK, contact,
rendering, reward, terminations and same-step resets). So an Isaac Lab run and
`scripts/train.py backend=isaaclab` step the same environment; DirectRLEnv's per-physics-step
hooks are not used, the backend runs the physics steps of each control step itself.
"""

from __future__ import annotations

import torch
from isaaclab.envs import DirectRLEnv, DirectRLEnvCfg
from isaaclab.envs.utils.spaces import spec_to_gym_space
from isaaclab.scene import InteractiveSceneCfg
from isaaclab.sim import SimulationCfg
from isaaclab.utils import configclass
from omegaconf import DictConfig, OmegaConf

from policies.workflow import compose_config
from sim.anatomy.patient_set import load_patients
from sim.backends.isaaclab.backend import IsaacLabScene
from sim.backends.isaaclab.config import IsaacLabCfg
from sim.backends.isaaclab.scene import physics_cfg
from sim.config import build
from sim.errors import InputError
from tasks import make_env, registry
from tasks.gym_ids import env_cfg_name

# Isaac Lab's physics config (what its --physics selects) -> backend.physics
ENGINES = {"NewtonCfg": "newton", "PhysxCfg": "physx"}


@configclass
class SonolabEnvCfg(DirectRLEnvCfg):
    """task: the registered sonolab task (conf/task/<task>.yaml); split: the patients' split; overrides:
    sonolab config overrides as on scripts/train.py's command line (conf/config.yaml keys, e.g.
    patient=totalseg_example, task.episode_steps=64, backend.physics_hz=120; backend is isaaclab).

    Isaac Lab's --num_envs (scene.num_envs), --device (sim.device) and --seed (seed) are used as
    they are, and the physics engine it launches (sim.physics, Newton by default; Isaac Lab's
    --physics isaacsim_physx selects PhysX on Isaac Sim) sets backend.physics. The simulation and scene configs,
    decimation, episode length and spaces are replaced by the task's when the environment starts.
    """

    task: str = ""
    split: str = "train"
    overrides: list[str] = []
    seed: int | None = 0
    decimation: int = 1
    episode_length_s: float = 10.0
    action_space: int = 0
    observation_space: int = 0
    state_space: int = 0
    sim: SimulationCfg = SimulationCfg(device="cpu", physics=physics_cfg(IsaacLabCfg(), "cpu"))
    scene: InteractiveSceneCfg = InteractiveSceneCfg(num_envs=64, env_spacing=2.5)


def task_env_cfg(task: str) -> type[SonolabEnvCfg]:
    """`SonolabEnvCfg` for `task` (the class a Gymnasium id's env_cfg_entry_point names)."""
    name = env_cfg_name(task)
    return configclass(
        type(
            name,
            (SonolabEnvCfg,),
            {"__annotations__": {"task": str}, "task": task, "__module__": __name__, "__qualname__": name},
        )
    )


# One config class per registered task: UsNavEnvCfg, UsNavStateEnvCfg, ...
globals().update({env_cfg_name(name): task_env_cfg(name) for name in registry.names()})


def sonolab_config(cfg: SonolabEnvCfg) -> DictConfig:
    """conf/config.yaml with cfg's task and overrides, and Isaac Lab's number of environments,
    device, seed and physics engine."""
    if isinstance(cfg.overrides, str) or not all(isinstance(o, str) for o in cfg.overrides):
        raise InputError(
            f"env.overrides {cfg.overrides!r}: expected a list of key=value strings; quote each on the command line: "
            """'env.overrides=["task.episode_steps=64","patient=totalseg_example"]'"""
        )
    physics = ENGINES.get(type(cfg.sim.physics).__name__)
    if physics is None:
        raise InputError(
            f"sim.physics {type(cfg.sim.physics).__name__}: "
            f"sonolab's tasks run on {sorted(ENGINES)} (--physics newton_mjwarp or isaacsim_physx)"
        )
    seed = 0 if cfg.seed is None else int(cfg.seed)
    isaaclab = [
        "backend=isaaclab",
        f"num_envs={cfg.scene.num_envs}",
        f"device={cfg.sim.device}",
        f"seed={seed}",
        f"backend.physics={physics}",
    ]
    registry.spec(cfg.task)  # a registered task, or InputError listing them
    return compose_config([f"task={cfg.task}", *cfg.overrides, *isaaclab])


class SonolabDirectEnv(DirectRLEnv):
    """The sonolab task `cfg.task` over cfg.scene.num_envs environments. Observations are the
    task's groups ("policy", "critic" and, for image tasks, "image"); `task` is the sonolab
    environment itself."""

    cfg: SonolabEnvCfg

    def __init__(self, cfg: SonolabEnvCfg, render_mode: str | None = None, **registration) -> None:
        conf = sonolab_config(cfg)
        num_envs, seed = int(conf.num_envs), int(conf.seed)
        patients = load_patients(conf.patient, cfg.split)
        task_settings = OmegaConf.to_container(conf.task, resolve=True)
        task = registry.spec(conf.task.name)
        task_cfg = build(task.config_class, registry.task_config(task.name, task_settings), "task config")
        backend_settings = OmegaConf.to_container(conf.backend, resolve=True)
        backend_settings.pop("name")
        # The task describes its scene, the backend turns it into the world's configs; Isaac Lab builds
        # the world from them in super().__init__.
        backend = IsaacLabScene(
            patients, task.env_class.scene_cfg(task_cfg), num_envs, conf.device, backend_settings, open_world=False
        )
        cfg.sim, cfg.scene = backend.sim_cfg, backend.scene_cfg
        cfg.decimation = max(1, round(1.0 / (task_cfg.control_hz * backend.physics_dt)))
        cfg.sim.render_interval = cfg.decimation
        cfg.episode_length_s = task_cfg.episode_steps / task_cfg.control_hz
        cfg.action_space = task.env_class.num_actions
        super().__init__(cfg, render_mode)
        backend.attach(self.sim, self.scene)
        probe = OmegaConf.to_container(conf.probe, resolve=True)
        self.task = make_env(task_settings, patients, num_envs, conf.device, seed, probe, backend)
        self._observation_spaces(self.task.get_observations())
        self.obs_buf = self._get_observations()

    def _observation_spaces(self, obs) -> None:
        """Gym spaces of every observation group: "policy" as cfg.observation_space, "critic" as
        cfg.state_space (Isaac Lab's asymmetric actor-critic), others (the image stack) beside them."""
        shapes = {name: list(value.shape[1:]) for name, value in obs.items()}
        self.cfg.observation_space, self.cfg.state_space = shapes.pop("policy"), shapes.pop("critic")
        self._configure_gym_env_spaces()
        for name, shape in shapes.items():
            self.single_observation_space[name] = spec_to_gym_space(shape)

    @property
    def max_episode_length(self) -> int:
        return self.task.max_episode_length

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """(N,) steps into each episode: the task's counter."""
        return self.task.episode_length_buf

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        # Isaac Lab assigns zeros before the task exists; rsl-rl assigns random starts
        # (init_at_random_ep_len), which go into the task's own counter.
        if "task" in self.__dict__:
            self.task.episode_length_buf.copy_(value)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """New episodes in every environment; seed reseeds the task's generator."""
        if seed is not None:
            self.task.generator.manual_seed(seed)
        self.obs_buf = dict(self.task.reset().items())
        return self.obs_buf, self.extras

    def step(self, action: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One control step of the task; extras hold "time_outs" and "log" (episode metrics of the
        environments that ended, rsl-rl's format)."""
        obs, self.reward_buf, self.reset_terminated, self.reset_time_outs, self.extras = self.task.step(action)
        self.reset_buf = self.reset_terminated | self.reset_time_outs
        self.common_step_counter += 1
        self.obs_buf = dict(obs.items())
        return self.obs_buf, self.reward_buf, self.reset_terminated, self.reset_time_outs, self.extras

    def _get_observations(self) -> dict[str, torch.Tensor]:
        return dict(self.task.get_observations().items())

    def _pre_physics_step(self, actions: torch.Tensor) -> None:
        raise NotImplementedError(
            "SonolabDirectEnv steps through its sonolab task (step); there is no per-physics-step action hook"
        )

    def _apply_action(self) -> None:
        raise NotImplementedError(
            "SonolabDirectEnv steps through its sonolab task (step); the backend drives each physics step"
        )

    def _get_rewards(self) -> torch.Tensor:
        return self.reward_buf

    def _get_dones(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reset_terminated, self.reset_time_outs
