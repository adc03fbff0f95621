"""Staged rollouts against a concurrent holdout, gated by always-valid statistics (shared/DESIGN.md §6–§8).

- :mod:`spec <modelfleet.rollout._spec>`: the YAML/JSON rollout spec, frozen once started;
- :mod:`cohort <modelfleet.rollout._cohort>`: sticky hashed cohorts;
- :mod:`states <modelfleet.rollout._states>`: the lifecycle as one transition table;
- :mod:`evaluate <modelfleet.rollout._evaluate>`: device-level gate evaluation;
- :mod:`reconciler <modelfleet.rollout._reconciler>`: the server-clock loop and operators' commands;
- :mod:`plan <modelfleet.rollout._plan>`: the power analysis a spec must pass before it starts;
- :mod:`experiment <modelfleet.rollout._experiment>`: experiment specs, sticky variants, what a device is told
  (A/B variant, or a shadow or time-slice candidate with its schedule), the A/B analysis;
- :mod:`experiment_paired <modelfleet.rollout._experiment_paired>`: shadow and time-slice analyses from telemetry;
- :mod:`drift <modelfleet.rollout._drift>`: per-device drift scores, fleet shares, retraining decisions.
"""

# ruff: noqa: RUF002 - the section signs above are the design document's

from __future__ import annotations

from modelfleet.rollout._cohort import BUCKETS, Cohort, assign, bucket, is_lab, treated_share
from modelfleet.rollout._desired import governing_rollout, rollout_version
from modelfleet.rollout._drift import (
    CONFIDENCE,
    DEFAULT_THRESHOLDS,
    UNTAGGED,
    DeviceDrift,
    DeviceWindows,
    DriftMetric,
    DriftPolicy,
    DriftScore,
    FeatureDrift,
    FleetDrift,
    RetrainDecision,
    VersionComparison,
    WindowCounts,
    compare_with_parent,
    evaluate_drift,
    feature_names,
)
from modelfleet.rollout._evaluate import (
    DeviceValues,
    GateResult,
    StageEvaluation,
    device_values,
    evaluate_stage,
    metric_value,
)
from modelfleet.rollout._experiment import (
    STARTABLE_KINDS,
    ExperimentAssignment,
    ExperimentKind,
    ExperimentSpec,
    analyze_experiment,
    device_arms,
    device_time_slice,
    experiment_assignment,
    experiment_bundle,
    experiment_variant,
    plan_for,
)
from modelfleet.rollout._experiment_run import (
    ExperimentWatcher,
    analysis_json,
    current_analysis,
    current_document,
    experiment_plan,
    promote_experiment,
    start_experiment,
    stop_experiment,
)
from modelfleet.rollout._plan import GatePlan, RolloutPlan, plan_rollout
from modelfleet.rollout._reconciler import (
    FAILURE_EVENTS,
    Decision,
    Reconciler,
    baseline_version,
    decide,
    new_rollout,
    run_command,
)
from modelfleet.rollout._spec import (
    METRICS,
    Gate,
    HardTriggers,
    LabStage,
    Metric,
    RolloutSpec,
    Stage,
    load_spec,
    parse_duration,
    parse_spec,
    validation_problems,
)
from modelfleet.rollout._states import ACTIVE, TERMINAL, Event, Position, RolloutState, transition

__all__ = [
    "ACTIVE",
    "BUCKETS",
    "CONFIDENCE",
    "DEFAULT_THRESHOLDS",
    "FAILURE_EVENTS",
    "METRICS",
    "STARTABLE_KINDS",
    "TERMINAL",
    "UNTAGGED",
    "Cohort",
    "Decision",
    "DeviceDrift",
    "DeviceValues",
    "DeviceWindows",
    "DriftMetric",
    "DriftPolicy",
    "DriftScore",
    "Event",
    "ExperimentAssignment",
    "ExperimentKind",
    "ExperimentSpec",
    "ExperimentWatcher",
    "FeatureDrift",
    "FleetDrift",
    "Gate",
    "GatePlan",
    "GateResult",
    "HardTriggers",
    "LabStage",
    "Metric",
    "Position",
    "Reconciler",
    "RetrainDecision",
    "RolloutPlan",
    "RolloutSpec",
    "RolloutState",
    "Stage",
    "StageEvaluation",
    "VersionComparison",
    "WindowCounts",
    "analysis_json",
    "analyze_experiment",
    "assign",
    "baseline_version",
    "bucket",
    "compare_with_parent",
    "current_analysis",
    "current_document",
    "decide",
    "device_arms",
    "device_time_slice",
    "device_values",
    "evaluate_drift",
    "evaluate_stage",
    "experiment_assignment",
    "experiment_bundle",
    "experiment_plan",
    "experiment_variant",
    "feature_names",
    "governing_rollout",
    "is_lab",
    "load_spec",
    "metric_value",
    "new_rollout",
    "parse_duration",
    "parse_spec",
    "plan_for",
    "plan_rollout",
    "promote_experiment",
    "rollout_version",
    "run_command",
    "start_experiment",
    "stop_experiment",
    "transition",
    "treated_share",
    "validation_problems",
]
