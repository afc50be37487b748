"""The trainable LoRA on the LongCat transformer: add it, list its parameters, load weights, remove it."""

from __future__ import annotations

import torch

from longcat.adapters.formats import PREFIX
from longcat.api.training_errors import ConfigError, Problem

ADAPTER_NAME = "lc_training"  # PEFT adapter name; no dots (PEFT keys layers by it)


def add_training_lora(transformer, rank: int, alpha: float, targets: list[str], dropout: float = 0.0,
                      seed: int = 0, init: str = "gaussian") -> list[torch.nn.Parameter]:
    """Wrap ``targets`` with a fresh LoRA (seeded init) and return its parameters, the only trainable ones.

    ``init``: "gaussian" (Meituan's edit-LoRA recipe: A ~ N(0, 1/rank)) or "default" (PEFT's kaiming-uniform
    A); B starts at zero either way, so a fresh adapter changes nothing."""
    from peft import LoraConfig

    if getattr(transformer, "peft_config", None):
        raise ConfigError([Problem("model", "the transformer already carries LoRA adapters "
                                            f"({', '.join(transformer.peft_config)}); train on a clean base")])
    _check_targets(transformer, targets)
    transformer.requires_grad_(False)
    # PEFT initialises lora_A from the global RNG: seed it so the same config gives the same start.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                           target_modules=list(targets),
                                           init_lora_weights="gaussian" if init == "gaussian" else True),
                                adapter_name=ADAPTER_NAME)
    params = lora_parameters(transformer)
    for p in params:
        # LoRA weights live in fp32 whatever the base dtype (bf16/int8): AdamW updates of bf16 weights stall.
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_parameters(transformer) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if f".{ADAPTER_NAME}." in n]


def load_lora_weights(transformer, path) -> None:
    """Copy a ``save_lora`` file's tensors into the training adapter, exactly (for resuming)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER_NAME)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise ValueError(f"{path}: tensors that do not fit the training adapter: {unexpected[:3]}")


def remove_training_lora(transformer) -> None:
    """Take the training adapter off again (for callers that lend us their loaded components)."""
    if ADAPTER_NAME not in (getattr(transformer, "peft_config", None) or {}):
        return  # never added (the run failed earlier): touch nothing
    transformer.delete_adapters(ADAPTER_NAME)
    if not getattr(transformer, "peft_config", None):
        transformer.unload_lora()  # no adapter left: put the plain linear layers back


def _check_targets(transformer, targets: list[str]) -> None:
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ConfigError([Problem("lora_target_modules",
                                   f"{unmatched} match no linear layer of the transformer (e.g. "
                                   f"{', '.join(names[:3])})")])
