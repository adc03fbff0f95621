"""Experiment results shared by A/B, shadow and time-slice analyses: lifts, the family correction, verdicts.

Every comparison is a variant against the control on one metric, measured on
devices (never on pooled inferences). Its evidence is always valid
(:mod:`modelfleet.stats._streams`), so a result may be read at any time:

- **p-values** are two-sided always-valid p-values (min over every look so
  far), adjusted across the family metrics × variants by Holm (family-wise
  error) or Benjamini–Hochberg (false discovery rate). Always-valid p-values
  only fall, and both adjustments are monotone in them, so a comparison once
  significant stays significant;
- **intervals** are confidence sequences at the Bonferroni level: each side at
  α/(2M) for a family of M comparisons, so all M intervals hold together with
  probability ≥ 1 − α at every look. The p-values are tuned at the same level,
  so under Holm a comparison whose interval excludes 0 is significant;
- **relative lift** is the difference divided by the control's mean device
  value at this look; its bounds are the difference's bounds over that mean, a
  first-order reading that ignores the control mean's own (smaller) error;
- a **ratio guard** (the shadow latency guard) is tested on per-device log
  ratios against a relative non-inferiority margin m: its stream is
  log(variant/control) − log(1 + m), so its p-value tests "exactly m slower",
  *worse* means significantly more than m slower and *better* means
  significantly less (non-inferiority within the margin shown). Its relative
  lift and bounds are the geometric-mean ratio − 1 with the stream's bounds
  mapped exactly; the difference is that ratio read at the control's mean.

Verdict of a variant, with the direction of each significant comparison taken
from the side whose evidence crossed:

- **loser**: some metric is significantly worse than the control;
- **winner**: the primary metric (the first one) is significantly better and
  no metric is significantly worse;
- **inconclusive**: neither, yet.

The experiment's verdict is ``stopped`` after a sample-ratio mismatch (A/B),
else ``winner`` when some variant wins (the best primary lift among the
winners), ``loser`` when every variant loses, ``inconclusive`` otherwise. Under
Holm, P(any false winner or loser at any look) ≤ α.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import BoolArray, FloatArray, IntArray, check_probability, float_array
from modelfleet.stats._gate import Direction
from modelfleet.stats._srm import SampleRatioCheck
from modelfleet.stats._streams import StreamPath

__all__ = [
    "INCONCLUSIVE",
    "LOSER",
    "STOPPED",
    "WINNER",
    "Correction",
    "ExperimentAnalysis",
    "ExperimentKind",
    "ExperimentMetric",
    "Lift",
    "VariantVerdict",
    "Verdict",
    "adjust_p_values",
]

ExperimentKind = Literal["ab", "shadow", "time_slice"]
Verdict = Literal["winner", "loser", "inconclusive", "stopped"]
Correction = Literal["holm", "bh"]

INCONCLUSIVE, WINNER, LOSER, STOPPED = 0, 1, 2, 3
"""Integer codes of the verdicts in vectorized form (simulations)."""

VERDICTS: dict[int, Verdict] = {INCONCLUSIVE: "inconclusive", WINNER: "winner", LOSER: "loser", STOPPED: "stopped"}


@dataclass(frozen=True, slots=True)
class ExperimentMetric:
    """A metric an experiment compares; the first one given is the primary metric, the rest are guards.

    Attributes:
        name: the metric's name (a key of the values mapping).
        direction: which way it improves.
    """

    name: str
    direction: Direction = "higher_is_better"

    def sign(self) -> float:
        """Return +1 when higher is better, −1 when lower is better."""
        if self.direction == "higher_is_better":
            return 1.0
        if self.direction == "lower_is_better":
            return -1.0
        msg = f"direction must be 'higher_is_better' or 'lower_is_better', got {self.direction!r}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Lift:
    """One variant against the control on one metric, at the latest look.

    Attributes:
        variant: the variant's name.
        metric: the metric's name.
        direction: which way the metric improves.
        primary: whether this is the primary metric.
        estimate: Δ = variant − control (device-level; the mean within-device difference when paired).
        lower: lower bound of Δ (confidence sequence at the Bonferroni level, see the module docstring).
        upper: upper bound of Δ.
        control_mean: the control's mean device value.
        relative: Δ / control mean (NaN when the control mean is not positive); for a ratio guard the
            geometric mean of the per-device ratios variant/control, − 1.
        relative_lower: lower / control mean (a ratio guard: the ratio's lower bound − 1).
        relative_upper: upper / control mean (a ratio guard: the ratio's upper bound − 1).
        p_value: always-valid two-sided p-value for Δ = 0, or for a ratio guard for "exactly ``margin``
            worse" (min over looks).
        adjusted_p_value: after Holm or BH across metrics × variants.
        significant: ``adjusted_p_value ≤ alpha``.
        better: significant, and the evidence says the variant is better (a ratio guard with a margin:
            less than ``margin`` worse).
        worse: significant, and the evidence says the variant is worse (a ratio guard: more than
            ``margin`` worse).
        devices: devices in the comparison (variant + control, or paired devices).
        margin: a ratio guard's relative non-inferiority margin (0.25: up to 25 % worse passes); 0 otherwise.
    """

    variant: str
    metric: str
    direction: Direction
    primary: bool
    estimate: float
    lower: float
    upper: float
    control_mean: float
    relative: float
    relative_lower: float
    relative_upper: float
    p_value: float
    adjusted_p_value: float
    significant: bool
    better: bool
    worse: bool
    devices: int
    margin: float = 0.0


@dataclass(frozen=True, slots=True)
class VariantVerdict:
    """A variant's verdict so far and why, in words (for ``status`` and the audit log)."""

    variant: str
    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class ExperimentAnalysis:
    """An experiment's state at the latest look, readable at any time.

    Attributes:
        kind: ``"ab"``, ``"shadow"`` or ``"time_slice"``.
        verdict: the experiment's verdict (see the module docstring).
        winner: the winning variant, if any.
        reason: the verdict in words; an SRM says what to check.
        variants: each variant's verdict.
        lifts: every comparison, variants in order, metrics in order within a variant.
        alpha: family-wise error (Holm) or false discovery rate (BH).
        correction: ``"holm"`` or ``"bh"``.
        devices: devices per arm, control first (A/B), or devices analysed per variant (paired kinds).
        sample_ratio: the χ² sample-ratio check at the latest counts (A/B only).
        sample_ratio_p_value: the sequential (anytime-valid) SRM p-value, min over looks (A/B only).
    """

    kind: ExperimentKind
    verdict: Verdict
    winner: str | None
    reason: str
    variants: tuple[VariantVerdict, ...]
    lifts: tuple[Lift, ...]
    alpha: float
    correction: Correction
    devices: tuple[int, ...]
    sample_ratio: SampleRatioCheck | None = None
    sample_ratio_p_value: float | None = None


def adjust_p_values(p_values: ArrayLike, correction: Correction = "holm") -> FloatArray:
    """Return Holm or Benjamini–Hochberg adjusted p-values along the last axis (vectorized over leading axes).

    The same adjustments as :func:`modelfleet.stats.holm` and
    :func:`modelfleet.stats.benjamini_hochberg`, for many families at once.
    """
    p = float_array(p_values)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    if correction == "holm":
        stepped = np.maximum.accumulate((m - np.arange(m)) * ranked, axis=-1)
    elif correction == "bh":
        scaled = ranked * m / np.arange(1, m + 1)
        stepped = np.minimum.accumulate(scaled[..., ::-1], axis=-1)[..., ::-1]
    else:
        msg = f"correction must be 'holm' or 'bh', got {correction!r}"
        raise ValueError(msg)
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.minimum(1.0, stepped), axis=-1)
    return adjusted


def side_alpha(alpha: float, comparisons: int) -> float:
    """Return the α of each interval side: α/(2M), the Bonferroni level of a two-sided family of M."""
    return check_probability(alpha, "alpha") / (2.0 * comparisons)


def verdict_codes(
    adjusted: FloatArray, oriented: FloatArray, *, variant_of: IntArray, primary: BoolArray, variants: int, alpha: float
) -> IntArray:
    """Return each variant's verdict code, shape ``[..., variants]``, from its comparisons along the last axis.

    Args:
        adjusted: adjusted p-values, ``[..., M]``.
        oriented: +1 where the evidence says better, −1 where it says worse, ``[..., M]``.
        variant_of: the variant (0-based among the non-control arms) of each comparison, ``[M]``.
        primary: whether each comparison is on the primary metric, ``[M]``.
        variants: number of non-control arms.
        alpha: the family's level.
    """
    significant = adjusted <= alpha
    better, worse = significant & (oriented > 0), significant & (oriented < 0)
    codes = np.zeros((*adjusted.shape[:-1], variants), dtype=np.int64)
    for v in range(variants):
        mine = variant_of == v
        loser = worse[..., mine].any(axis=-1)
        winner = better[..., mine & primary].any(axis=-1) & ~loser
        codes[..., v] = np.where(loser, LOSER, np.where(winner, WINNER, INCONCLUSIVE))
    return codes


def experiment_codes(variant_codes: IntArray) -> IntArray:
    """Return the experiment's verdict code from its variants' codes along the last axis (no SRM)."""
    any_winner = (variant_codes == WINNER).any(axis=-1)
    all_losers = (variant_codes == LOSER).all(axis=-1)
    return np.where(any_winner, WINNER, np.where(all_losers, LOSER, INCONCLUSIVE)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One (variant, metric) comparison's path at its latest look, before the family correction.

    ``ratio_margin`` marks a ratio guard: ``path`` is then the stream of per-device
    log(variant/control) − log(1 + ratio_margin) (see the module docstring).
    """

    variant: str
    metric: ExperimentMetric
    primary: bool
    path: StreamPath
    devices: int
    ratio_margin: float | None = None


def _last(array: FloatArray) -> float:
    """Return the last look's value (NaN for an empty stream)."""
    return float(array[-1]) if array.size else math.nan


def _relative(value: float, control_mean: float) -> float:
    """Return value / control mean, NaN when the control mean is not positive."""
    return value / control_mean if control_mean > 0 and math.isfinite(control_mean) else math.nan


def _readings(c: Comparison) -> tuple[float, float, float, float, float, float, float]:
    """Return (estimate, lower, upper, control mean, relative, relative lower, relative upper) at the last look."""
    control = _last(c.path.control_mean)
    if not c.path.estimate.size:
        return math.nan, -math.inf, math.inf, control, math.nan, math.nan, math.nan
    estimate, lower, upper = _last(c.path.estimate), _last(c.path.lower), _last(c.path.upper)
    if c.ratio_margin is None:
        relative = [_relative(value, control) for value in (estimate, lower, upper)]
        return estimate, lower, upper, control, relative[0], relative[1], relative[2]
    shift = math.log1p(c.ratio_margin)
    # An infinite bound (before the burn-in) stays infinite on both scales.
    ratio = [math.expm1(v + shift) if math.isfinite(v) else v for v in (estimate, lower, upper)]
    scale = control if control > 0 and math.isfinite(control) else math.nan
    absolute = [r * scale if math.isfinite(r) else r for r in ratio]
    return absolute[0], absolute[1], absolute[2], control, ratio[0], ratio[1], ratio[2]


def build_lifts(comparisons: Sequence[Comparison], alpha: float, correction: Correction) -> tuple[Lift, ...]:
    """Apply the family correction to the comparisons' latest p-values and return their lifts."""
    raw = np.array([_last(c.path.p_value()) if c.path.estimate.size else 1.0 for c in comparisons])
    adjusted = adjust_p_values(np.nan_to_num(raw, nan=1.0), correction)
    lifts = []
    for c, p, q in zip(comparisons, raw, adjusted, strict=True):
        sign = _last(c.path.sign()) * c.metric.sign() if c.path.estimate.size else 0.0
        significant = bool(q <= alpha)
        estimate, lower, upper, control, relative, relative_lower, relative_upper = _readings(c)
        lifts.append(
            Lift(
                variant=c.variant,
                metric=c.metric.name,
                direction=c.metric.direction,
                primary=c.primary,
                estimate=estimate,
                lower=lower,
                upper=upper,
                control_mean=control,
                relative=relative,
                relative_lower=relative_lower,
                relative_upper=relative_upper,
                p_value=float(np.nan_to_num(p, nan=1.0)),
                adjusted_p_value=float(q),
                significant=significant,
                better=significant and sign > 0,
                worse=significant and sign < 0,
                devices=c.devices,
                margin=c.ratio_margin or 0.0,
            )
        )
    return tuple(lifts)


def _describe(lift: Lift) -> str:
    """Return one comparison's numbers in words."""
    relative = "" if math.isnan(lift.relative) else f" ({lift.relative:+.2%})"
    margin = f", margin {lift.margin:+.0%}" if lift.margin > 0 else ""
    return (
        f"{lift.metric} {lift.estimate:+.4g}{relative}, interval [{lift.lower:.4g}, {lift.upper:.4g}]{margin}, "
        f"adjusted always-valid p = {lift.adjusted_p_value:.3g}"
    )


def variant_verdict(variant: str, lifts: Sequence[Lift], alpha: float, correction: Correction) -> VariantVerdict:
    """Return one variant's verdict from its lifts, with the reason in words."""
    mine = [lift for lift in lifts if lift.variant == variant]
    worse = [lift for lift in mine if lift.worse]
    if worse:
        detail = "; ".join(_describe(lift) for lift in worse)
        return VariantVerdict(variant, "loser", f"{variant} is worse than the control: {detail} (<= alpha = {alpha:g})")
    better = [lift for lift in mine if lift.primary and lift.better]
    if better:
        reason = f"{variant} beats the control on the primary metric: {_describe(better[0])} (<= alpha = {alpha:g}, "
        reason += f"{correction} across {len(lifts)} comparisons); no guard metric is worse"
        return VariantVerdict(variant, "winner", reason)
    best = min((lift.adjusted_p_value for lift in mine), default=1.0)
    reason = f"{variant}: no metric differs significantly from the control yet (smallest adjusted p = {best:.3g})"
    return VariantVerdict(variant, "inconclusive", reason)


def summarize(
    kind: ExperimentKind,
    comparisons: Sequence[Comparison],
    *,
    alpha: float,
    correction: Correction,
    devices: tuple[int, ...],
) -> ExperimentAnalysis:
    """Assemble the analysis of the comparisons at their latest look (no SRM stop)."""
    lifts = build_lifts(comparisons, alpha, correction)
    names = list(dict.fromkeys(c.variant for c in comparisons))
    verdicts = tuple(variant_verdict(name, lifts, alpha, correction) for name in names)
    winners = [v.variant for v in verdicts if v.verdict == "winner"]
    if winners:
        primary = {
            lift.variant: lift.estimate * (1 if lift.direction == "higher_is_better" else -1)
            for lift in lifts
            if lift.primary
        }
        winner = max(winners, key=lambda name: primary.get(name, -math.inf))
        reason = next(v.reason for v in verdicts if v.variant == winner)
        return ExperimentAnalysis(kind, "winner", winner, reason, verdicts, lifts, alpha, correction, devices)
    if verdicts and all(v.verdict == "loser" for v in verdicts):
        reason = "; ".join(v.reason for v in verdicts)
        return ExperimentAnalysis(kind, "loser", None, reason, verdicts, lifts, alpha, correction, devices)
    reason = "; ".join(v.reason for v in verdicts) or "no comparison yet"
    return ExperimentAnalysis(kind, "inconclusive", None, reason, verdicts, lifts, alpha, correction, devices)
