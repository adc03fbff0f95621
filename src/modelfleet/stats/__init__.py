"""Statistics for gated rollouts: pure functions on device-level aggregates, counts and histograms.

Layer 1 of the package (shared/DESIGN.md §2, §7, §8): it imports only numpy,
scipy and the standard library, does no I/O, and takes randomness only from an
injected ``numpy.random.Generator``. The unit of analysis is always the device.

- device-level comparisons: :func:`difference_in_means`, :func:`difference_in_proportions`,
  :func:`ratio_of_means`, :func:`cluster_robust_difference`;
- sequential, always-valid gates: :func:`confidence_sequence`, :func:`evaluate_gate`,
  :func:`gate_decision`, :func:`always_valid_p_value` (docs/adr/0004-sequential-gates.md);
- multiple comparisons: :func:`holm`, :func:`benjamini_hochberg`, :func:`split_alpha`;
- sample-ratio mismatch: :func:`sample_ratio_mismatch`, :func:`sequential_sample_ratio_p_value`;
- planning: :func:`plan_stage`;
- drift: :func:`population_stability_index`, :func:`kl_divergence`,
  :func:`jensen_shannon_distance`, :func:`binned_ks_distance`, :func:`persistent_drift`,
  :func:`drift_share_by_group`;
- label-free performance: :func:`estimated_accuracy`, :func:`prediction_mix_shift`;
- experiments (docs/adr/0007-experiment-analysis.md): A/B with n variants :func:`analyze_ab`,
  shadow :func:`analyze_shadow`, time-slice :func:`analyze_time_slice` with :func:`time_slice_schedule`,
  planning :func:`plan_experiment` on :func:`fleet_variance`, simulation :func:`simulate_experiments`;
- simulation: :func:`simulate_rollouts`; our gate against a fixed-horizon test, naive peeking
  and a failure-threshold gate on the same runs: :func:`compare_gates`, :func:`fixed_horizon_devices`,
  :func:`fixed_horizon_bounds`, :func:`threshold_gate_aborts`, :func:`clopper_pearson`.
"""

from __future__ import annotations

from modelfleet.stats._ab import analyze_ab, sequential_srm_path
from modelfleet.stats._baselines import fixed_horizon_bounds, fixed_horizon_devices, threshold_gate_aborts
from modelfleet.stats._compare import (
    Estimate,
    RatioEstimate,
    cluster_robust_difference,
    difference_in_means,
    difference_in_proportions,
    ratio_of_means,
)
from modelfleet.stats._comparison import (
    GateComparison,
    GateOutcome,
    ThresholdGate,
    clopper_pearson,
    compare_gates,
)
from modelfleet.stats._drift import (
    DEFAULT_SMOOTHING,
    DriftShare,
    binned_ks_distance,
    drift_share_by_group,
    jensen_shannon_distance,
    kl_divergence,
    persistent_drift,
    population_stability_index,
)
from modelfleet.stats._experiment_plan import (
    ExperimentPlan,
    FleetVariance,
    fleet_variance,
    paired_difference_sd,
    plan_experiment,
)
from modelfleet.stats._experiment_sim import ExperimentScenario, ExperimentSimulation, simulate_experiments
from modelfleet.stats._experiments import (
    INCONCLUSIVE,
    LOSER,
    STOPPED,
    WINNER,
    Correction,
    ExperimentAnalysis,
    ExperimentKind,
    ExperimentMetric,
    Lift,
    VariantVerdict,
    Verdict,
    adjust_p_values,
)
from modelfleet.stats._gate import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    Decision,
    Direction,
    GateEvaluation,
    decision_codes,
    evaluate_gate,
    gate_decision,
    oriented_bounds,
)
from modelfleet.stats._label_free import (
    AccuracyEstimate,
    CalibrationMap,
    PredictionMixShift,
    calibration_map,
    estimated_accuracy,
    prediction_mix_shift,
)
from modelfleet.stats._multiple import AdjustedPValues, benjamini_hochberg, holm, split_alpha
from modelfleet.stats._power import StagePlan, minimum_detectable_effect, plan_stage
from modelfleet.stats._sequential import (
    DEFAULT_MIN_DEVICES_PER_ARM,
    Alternative,
    ConfidenceSequence,
    ConfidenceSequencePath,
    always_valid_p_value,
    confidence_sequence,
    confidence_sequence_path,
    difference_stream,
)
from modelfleet.stats._shadow import (
    DEFAULT_SHADOW_LATENCY_MARGIN,
    SHADOW_ACCURACY,
    SHADOW_LATENCY,
    DeviceInterval,
    ShadowAnalysis,
    ShadowLabels,
    analyze_shadow,
)
from modelfleet.stats._simulate import (
    RolloutScenario,
    RolloutSimulation,
    simulate_device_values,
    simulate_rollouts,
)
from modelfleet.stats._srm import (
    SRM_THRESHOLD,
    SampleRatioCheck,
    sample_ratio_mismatch,
    sequential_sample_ratio_p_value,
)
from modelfleet.stats._time_slice import Trend, analyze_time_slice, time_slice_schedule, within_device_effects

__all__ = [
    "CONTINUE",
    "DEFAULT_MIN_DEVICES_PER_ARM",
    "DEFAULT_SHADOW_LATENCY_MARGIN",
    "DEFAULT_SMOOTHING",
    "INCONCLUSIVE",
    "LOSER",
    "PROMOTE",
    "ROLLBACK",
    "SHADOW_ACCURACY",
    "SHADOW_LATENCY",
    "SRM_THRESHOLD",
    "STOPPED",
    "WINNER",
    "AccuracyEstimate",
    "AdjustedPValues",
    "Alternative",
    "CalibrationMap",
    "ConfidenceSequence",
    "ConfidenceSequencePath",
    "Correction",
    "Decision",
    "DeviceInterval",
    "Direction",
    "DriftShare",
    "Estimate",
    "ExperimentAnalysis",
    "ExperimentKind",
    "ExperimentMetric",
    "ExperimentPlan",
    "ExperimentScenario",
    "ExperimentSimulation",
    "FleetVariance",
    "GateComparison",
    "GateEvaluation",
    "GateOutcome",
    "Lift",
    "PredictionMixShift",
    "RatioEstimate",
    "RolloutScenario",
    "RolloutSimulation",
    "SampleRatioCheck",
    "ShadowAnalysis",
    "ShadowLabels",
    "StagePlan",
    "ThresholdGate",
    "Trend",
    "VariantVerdict",
    "Verdict",
    "adjust_p_values",
    "always_valid_p_value",
    "analyze_ab",
    "analyze_shadow",
    "analyze_time_slice",
    "benjamini_hochberg",
    "binned_ks_distance",
    "calibration_map",
    "clopper_pearson",
    "cluster_robust_difference",
    "compare_gates",
    "confidence_sequence",
    "confidence_sequence_path",
    "decision_codes",
    "difference_in_means",
    "difference_in_proportions",
    "difference_stream",
    "drift_share_by_group",
    "estimated_accuracy",
    "evaluate_gate",
    "fixed_horizon_bounds",
    "fixed_horizon_devices",
    "fleet_variance",
    "gate_decision",
    "holm",
    "jensen_shannon_distance",
    "kl_divergence",
    "minimum_detectable_effect",
    "oriented_bounds",
    "paired_difference_sd",
    "persistent_drift",
    "plan_experiment",
    "plan_stage",
    "population_stability_index",
    "prediction_mix_shift",
    "ratio_of_means",
    "sample_ratio_mismatch",
    "sequential_sample_ratio_p_value",
    "sequential_srm_path",
    "simulate_device_values",
    "simulate_experiments",
    "simulate_rollouts",
    "split_alpha",
    "threshold_gate_aborts",
    "time_slice_schedule",
    "within_device_effects",
]
