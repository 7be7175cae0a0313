"""The Isaac Lab 3 backend: `IsaacLabScene` (backend.py) on a scene (scene.py) built from local
assets (assets.py: USD written by sonolab). Importing `backend` needs Isaac Lab
(`pip install -e ".[isaac]"`, Python 3.12); this package itself does not."""
