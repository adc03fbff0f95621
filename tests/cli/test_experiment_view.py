"""``modelfleet experiment status``: a shadow's agreement, confidence difference, latencies and (b, c) are shown."""

from rich.console import Console

from modelfleet.cli._experiment import status_view

SHADOW = {
    "id": "ex-0123456789",
    "model": "digits",
    "kind": "shadow",
    "state": "running",
    "analysis": {
        "reason": "inconclusive so far",
        "devices": [40],
        "lifts": [],
        "shadow": {
            "agreement": {"estimate": 0.859, "lower": 0.852, "upper": 0.867, "devices": 40},
            "confidence_difference": {"estimate": 0.0045, "lower": 0.0008, "upper": 0.0081, "devices": 40},
            "active_latency_ms": 0.395,
            "candidate_latency_ms": 0.479,
            "discordant": {"only_active_correct": 36, "only_candidate_correct": 512},
        },
    },
}


def render(experiment):
    console = Console(width=400, record=True)
    console.print(status_view(experiment))
    return console.export_text()


def test_a_shadow_status_shows_agreement_latencies_and_the_discordant_counts():
    text = render(SHADOW)
    assert "agreement 0.859 [0.852, 0.867] over 40 devices" in text
    assert "only active right 36, only candidate right 512" in text
    assert "candidate 0.479 ms" in text


LATENCY_GUARD = {
    "variant": "2.0.0", "metric": "latency_ms", "primary": False, "devices": 40, "estimate": 0.084,
    "lower": 0.05, "upper": 0.11, "relative": 0.21, "adjusted_p_value": 0.001, "better": True, "worse": False,
    "margin": 0.25,
}  # fmt: skip


def test_a_shadow_status_shows_the_latency_guards_margin_and_reads_its_better_side_as_within_it():
    experiment = {**SHADOW, "analysis": {**SHADOW["analysis"], "lifts": [LATENCY_GUARD]}}
    experiment["analysis"]["shadow"] = {**SHADOW["analysis"]["shadow"], "latency_margin": 0.25}
    text = render(experiment)
    assert "latency_ms (margin +25%)" in text
    assert "within margin" in text
    assert "better" not in text
    assert "candidate 0.479 ms (the guard lets the candidate measure up to 25% slower)" in text


def test_an_analysis_stored_before_guards_had_margins_still_shows():
    old = {key: value for key, value in LATENCY_GUARD.items() if key != "margin"}
    text = render({**SHADOW, "analysis": {**SHADOW["analysis"], "lifts": [old]}})
    assert "latency_ms " in text
    assert "better" in text
    assert "margin" not in text


def test_a_time_slice_status_shows_its_schedule():
    experiment = {**SHADOW, "kind": "time_slice", "analysis": {"reason": "", "devices": [4], "lifts": []}}
    experiment["analysis"]["time_slice"] = {"slot_seconds": 300, "slots_per_device": 4}
    assert "time slice: 4 slots of 300 s per device" in render(experiment)
