"""The contract layer: what clients, the gateway and the model services agree on, with no torch.

- ``edit`` / ``edit_proto``: the edit request, its limits and validation; the proto message -> request
- ``sizes``: the output size rule (~1 MP default, multiples of 16), a copy of diffusers' held equal by a test
- ``prompts``: prompt token counting (the pipeline's rule) and a ``tokenizers``-only tokenizer
- ``names``: adapter/dataset names, LoRA file names; ``models``: where models live
- ``keys``: the Redis key schema
- ``training`` / ``training_config`` / ``dataloader`` / ``datasets`` / ``jsonc`` / ``training_errors``: a
  training job's description, its parsing, path confinement and dataset checks

Only the standard library, ``longcat.errors``, ``longcat.images`` (Pillow) and the generated ``longcat.v1``
stubs may be imported here (tests/test_layers.py).
"""
