"""The run configuration: dataclasses whose attribute docstrings are the documentation
(``rsft.config.schema``), YAML onto them and back (``rsft.config.yaml_io``), and every check of a
value (``rsft.config.checks``).

A YAML file maps onto ``RunConfig``; unknown keys are rejected with the nearest valid name, and
values are type-checked, so a typo never silently falls back to a default. Every name below stays
importable from ``rsft.config``.
"""

from rsft.config.checks import check_adaptive_policy, check_run
from rsft.config.schema import (
    MIXED_PRECISION,
    REPORT_TO,
    STOP_RULES,
    TRACKERS,
    ActorPoolConfig,
    AdaptiveGenerationConfig,
    EvalConfig,
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RayConfig,
    RewardServerConfig,
    RmCheckConfig,
    RoundsConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
    ServeConfig,
    SweepConfig,
    TaskConfig,
    TrackingConfig,
    TrainConfig,
    choices,
    sampling_params,
)
from rsft.config.yaml_io import dump_config, field_docs, from_dict, key_value, load_config, to_dict

__all__ = [
    "MIXED_PRECISION", "REPORT_TO", "STOP_RULES", "TRACKERS", "ActorPoolConfig", "AdaptiveGenerationConfig", "EvalConfig",
    "GenerationConfig", "GeneratorConfig", "PromptsConfig", "RayConfig", "RewardServerConfig", "RmCheckConfig",
    "RoundsConfig", "RunConfig", "SamplingConfig", "ScoringConfig", "SelectionConfig", "ServeConfig", "SweepConfig",
    "TaskConfig", "TrackingConfig", "TrainConfig", "check_adaptive_policy", "check_run", "choices", "dump_config", "field_docs", "from_dict", "key_value",
    "load_config", "sampling_params", "to_dict",
]
