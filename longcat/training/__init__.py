"""LoRA training of LongCat-Image-Edit on paired edit/reference datasets (the quickstart's workflow).

The job's description (config.json, dataloader JSON, dataset checks, path policy) is the contract layer's
(:mod:`longcat.api`); here: ``buckets`` / ``data`` / ``cache`` / ``embed`` (the data pipeline), ``lora`` /
``loop`` (the adapter and the step), ``checkpoint``, ``validation`` (rendering through the edit engine),
``output`` (adapter file, summary, publishing), ``trainer`` (the run, in order).

Names resolve lazily (PEP 562): importing one module here does not load the whole model stack.
"""

from longcat.lazy import lazy_exports

_EXPORTS = {
    "TrainingConfig": "longcat.api.training_config", "parse_config": "longcat.api.training_config",
    "DataloaderConfig": "longcat.api.dataloader", "DatasetConfig": "longcat.api.dataloader",
    "parse_dataloader": "longcat.api.dataloader", "Embedder": "longcat.training.embed",
    "InProcessEmbedder": "longcat.training.embed", "ConfigError": "longcat.api.training_errors",
    "DatasetError": "longcat.api.training_errors", "Problem": "longcat.api.training_errors",
    "TrainingFailed": "longcat.api.training_errors", "publish": "longcat.training.output",
    "Trainer": "longcat.training.trainer", "TrainResult": "longcat.training.trainer",
    "train": "longcat.training.trainer", "DatasetReport": "longcat.api.datasets", "Pair": "longcat.api.datasets",
    "resolve_inside": "longcat.api.datasets", "validate_datasets": "longcat.api.datasets",
    "ValidationRun": "longcat.training.validation", "run_validation": "longcat.training.validation",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
