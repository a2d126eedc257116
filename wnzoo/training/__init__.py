"""Training: validated configs, warmup schedules, the device-resident loop, several runs stacked into
one model, run states and resume, and time-boxed jobs of several runs."""
from .checkpoint import RunFolder, RunState, StateError
from .config import COMPILE_MODES, ConfigError, TrainConfig, load_config, parse_overrides
from .loop import TrainingDiverged, export_run, throughput, train, train_stack
from .schedule import LRSchedule

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "COMPILE_MODES", "train", "train_stack",
           "export_run", "throughput", "TrainingDiverged", "LRSchedule", "RunFolder", "RunState", "StateError"]
