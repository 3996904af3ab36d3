"""The catalog's metrics, in two halves: what a call records, and the instruments that count it.

`GatewayMetrics` is the request path's half. Call sites never name a metric: they call its
methods, each of which appends one `MEASURE` record (`call_records.py`) to the sink — no SDK
call, no attribute hashing on the request. In-flight calls are a plain dict, read when
metrics are collected.

`MetricInstruments` is the telemetry side's half: the SDK instruments, created once on a
Meter from the catalog, fed batches of records (`record`), plus the observable counters whose
values live elsewhere (exporters, trace store, record drops). The catalog stays the only place
a name, unit or attribute set is written down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway.telemetry.call_records import MEASURE, MEASURED
from gateway.telemetry.catalog import CATALOG, Instrument, Kind

__all__ = ["ActiveCounts", "Attributes", "GatewayMetrics", "MetricInstruments", "ObservedCounts"]

Attributes = Mapping[str, str | int | float | bool]
# A callback answering {attribute tuple: cumulative count}; attribute tuples follow the
# instrument's attribute order.
ObservedCounts = Callable[[], Mapping[tuple[str, ...], int]]
# In-flight calls by rpc.method, summed over every serving process.
ActiveCounts = Callable[[], Mapping[str, int]]

_RPC, _GENAI, _TOKENS, _TTFT, _TPOT, _COST = range(len(MEASURED))


class GatewayMetrics:
    """What a call records. Every method is one append; only the event loop thread calls them."""

    def __init__(
        self,
        sink: Callable[[tuple[object, ...]], None],
        active_changed: Callable[[], None] = lambda: None,
    ) -> None:
        """`active_changed`: told when a call starts (a serving process then sends its
        in-flight counts soon even with nothing else to send: a long stream shows)."""
        self._sink = sink
        self._active_changed = active_changed
        self.active: dict[str, int] = {}

    # --- RPC ------------------------------------------------------------------------------------

    def rpc_started(self, method: str) -> None:
        self.active[method] = self.active.get(method, 0) + 1
        self._active_changed()

    def rpc_finished(self, method: str, call_attrs: Attributes, seconds: float) -> None:
        self.active[method] -= 1
        self._sink((MEASURE, _RPC, seconds, call_attrs))

    # --- GenAI ----------------------------------------------------------------------------------

    def genai_finished(self, attrs: Attributes, seconds: float) -> None:
        self._sink((MEASURE, _GENAI, seconds, attrs))

    def tokens(
        self, input_attrs: Attributes, output_attrs: Attributes, input_n: int, output_n: int
    ) -> None:
        self._sink((MEASURE, _TOKENS, input_n, input_attrs))
        self._sink((MEASURE, _TOKENS, output_n, output_attrs))

    def time_to_first_token(self, attrs: Attributes, seconds: float) -> None:
        self._sink((MEASURE, _TTFT, seconds, attrs))

    def time_per_output_token(self, attrs: Attributes, seconds: float) -> None:
        self._sink((MEASURE, _TPOT, seconds, attrs))

    def cost(self, attrs: Attributes, usd: float) -> None:
        self._sink((MEASURE, _COST, usd, attrs))


class MetricInstruments:
    """The SDK instruments of the catalog on one Meter."""

    def __init__(self, meter: Meter, active: ActiveCounts) -> None:
        self._meter = meter
        self._active = active
        recorders = []
        for i in MEASURED:
            if i.kind is Kind.HISTOGRAM:
                recorders.append(
                    meter.create_histogram(i.name, unit=i.unit, description=i.description).record
                )
            else:
                assert i.kind is Kind.COUNTER
                recorders.append(
                    meter.create_counter(i.name, unit=i.unit, description=i.description).add
                )
        self._recorders = tuple(recorders)
        i = CATALOG.ACTIVE_REQUESTS
        meter.create_observable_up_down_counter(
            i.name, callbacks=[self._observe_active], unit=i.unit, description=i.description
        )

    def record(self, instrument: int, value: float, attrs: Attributes) -> None:
        self._recorders[instrument](value, attrs)

    def observe(self, instrument: Instrument, counts: ObservedCounts) -> None:
        """Register a cumulative counter whose values live elsewhere (exporter, trace store)."""
        assert instrument.kind is Kind.OBSERVABLE_COUNTER
        keys = instrument.attributes

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, dict(zip(keys, k, strict=True))) for k, n in counts().items()]

        self._meter.create_observable_counter(
            instrument.name,
            callbacks=[callback],
            unit=instrument.unit,
            description=instrument.description,
        )

    def _observe_active(self, _: CallbackOptions) -> Iterable[Observation]:
        key = CATALOG.ACTIVE_REQUESTS.attributes[0]
        return [Observation(n, {key: method}) for method, n in self._active().items()]
