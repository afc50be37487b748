"""LoRA training of LongCat-Image-Edit on paired edit/reference datasets (the quickstart's workflow).

One module per job: ``config`` (config.json), ``dataloader`` (dataloader JSON), ``validate`` (dataset checks,
path policy), ``buckets`` / ``data`` / ``cache`` / ``embed`` (the data pipeline), ``lora`` / ``loop`` (the
adapter and the step), ``checkpoint``, ``validation`` (rendering through the edit engine), ``output``
(adapter file, summary, publishing), ``trainer`` (the run, in order).
"""

from longcat.training.config import TrainingConfig, parse_config
from longcat.training.dataloader import DataloaderConfig, DatasetConfig, parse_dataloader
from longcat.training.embed import Embedder, InProcessEmbedder
from longcat.training.errors import ConfigError, DatasetError, Problem, TrainingFailed
from longcat.training.output import publish
from longcat.training.trainer import Trainer, TrainResult, train
from longcat.training.validate import DatasetReport, Pair, resolve_inside, validate_datasets
from longcat.training.validation import ValidationRun, run_validation

__all__ = [
    "TrainingConfig", "parse_config", "DataloaderConfig", "DatasetConfig", "parse_dataloader", "Embedder",
    "InProcessEmbedder", "ConfigError", "DatasetError", "Problem", "TrainingFailed", "publish", "Trainer",
    "TrainResult", "train", "DatasetReport", "Pair", "resolve_inside", "validate_datasets", "ValidationRun",
    "run_validation",
]
