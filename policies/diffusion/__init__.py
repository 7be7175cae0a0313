"""Diffusion policy (Chi et al. 2023, "Diffusion Policy: Visuomotor Policy Learning via Action
Diffusion", CNN variant): a conditional 1-D U-Net denoises a chunk of future actions given an
encoding of the last observations.

- `networks`: the observation encoder, the U-Net and `DiffusionPolicyNet` (training loss, DDIM
  sampling, the two ONNX-exportable graphs); torch and diffusers.
- `normalizer`: the dataset statistics the network works in, saved in its state_dict; torch.
- `schedule`: the DDIM schedule and sampling loop in plain numpy, for robot PCs that run the
  exported graphs without torch. Importing this package imports neither torch nor diffusers.
"""
