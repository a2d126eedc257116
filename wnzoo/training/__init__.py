"""Training: validated configs, warmup schedules, the device-resident loop, checkpoints and resume."""
from .config import ConfigError, TrainConfig, load_config, parse_overrides
from .loop import TrainingDiverged, train
from .schedule import LRSchedule

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "train", "TrainingDiverged", "LRSchedule"]
