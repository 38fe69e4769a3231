"""Reading a Prometheus text exposition (a service's GET /metrics) with prometheus_client's own
parser: the one way the tests, the e2e suite and the benchmarks read metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> list[Sample]:
    """Every sample of the exposition, counters by their `_total` name, histograms by their
    `_bucket`, `_sum` and `_count` series."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels` (NaN included); None when the
    exposition has no such series."""
    for sample in samples(text):
        if sample.name == name and sample.labels == labels:
            return float(sample.value)
    return None
