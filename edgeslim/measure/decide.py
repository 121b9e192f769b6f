"""Compare timings taken in interleaved rounds, with confidence intervals, and pick a model by them.

Why: on a loaded machine two timings of the same model differ by more than two good candidates do, so
"the lower p50 wins" flips from run to run (the PP-OCRv4 recogniser came out 2.49x smaller in one run
and 1.98x in the next, same command). Here every comparison is a *ratio per round* (candidate time /
reference time, both from the same interleaved round, so a burst of load hits both), summarised by the
median ratio and a distribution-free confidence interval of that median (order statistics of the
binomial, no random resampling: the same timings always give the same interval). Two models whose
interval contains 1 are *tied* on speed, and ties go to the more faithful file (`Option.error`, lower
is better; errors within `FIDELITY_TIE` of the best count as equal), then to the smaller one. Two files that ONNX Runtime
turns into the same kernels (`Option.kernels`, e.g. int8- and fp16-stored weights both decoded at load)
are tied whatever their timings say: that difference is the noise of separate sessions, and letting it
decide made the pick flip between runs. All ratios are time ratios:
below 1 means faster than the reference; `speedup` = 1 / ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Ratio:
    """Median per-round time ratio (candidate / reference) with its 95% confidence interval."""

    median: float
    lo: float
    hi: float
    rounds: int

    @property
    def speedup(self) -> float:
        return 1.0 / self.median if self.median > 0 else math.inf

    def speed_verdict(self, margin: float = 0.0) -> Literal["faster", "slower", "tied"]:
        """faster / slower when the whole interval lies beyond 1 -/+ `margin` (fraction), else tied."""
        if self.hi < 1.0 - margin:
            return "faster"
        if self.lo > 1.0 + margin:
            return "slower"
        return "tied"

    def show(self) -> str:
        return f"{self.speedup:.2f}x (95% CI {1 / self.hi:.2f}-{1 / self.lo:.2f}x over {self.rounds} rounds)"


def per_round(times: Sequence[float], per: int) -> np.ndarray:
    """Median of each round's `per` consecutive runs (seconds), so one slow run does not make a round."""
    t = np.asarray(times, np.float64)
    n = len(t) // per
    return np.median(t[: n * per].reshape(n, per), axis=1) if per > 1 else t[:n]


def median_ci(x: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """(median, lo, hi) of `x`; lo/hi are the order statistics that bound the median with ~95% coverage
    (normal approximation of the binomial; the full range for fewer than 6 values)."""
    s = np.sort(np.asarray(x, np.float64))
    n = len(s)
    if n == 0:
        return math.nan, math.nan, math.nan
    med = float(np.median(s))
    if n < 6:
        return med, float(s[0]), float(s[-1])
    k = int(math.floor(n / 2 - z * math.sqrt(n) / 2))
    k = max(k, 0)
    return med, float(s[k]), float(s[n - 1 - k])


def ratio(cand: Sequence[float], ref: Sequence[float], per: int = 1) -> Ratio:
    """Time ratio `cand` / `ref` from timings taken in the same interleaved rounds (`per` runs each)."""
    a, b = per_round(cand, per), per_round(ref, per)
    n = min(len(a), len(b))
    r = a[:n] / np.maximum(b[:n], 1e-12)
    med, lo, hi = median_ci(r)
    return Ratio(med, lo, hi, n)


@dataclass
class Option:
    """One model to choose from: its name, file size (bytes), whether its outputs are within tolerance,
    and its per-round times (s) from the same interleaved run as the reference's."""

    name: str
    size: int
    faithful: bool
    times: Sequence[float]
    why: str = ""  # filled by `choose_option`: why it won or lost
    kernels: str = ""  # onnxkit.session.kernel_signature: options with the same one run the same kernels
    error: float | None = None  # fidelity: the output error vs the reference (lower is better; None: unknown)


FIDELITY_TIE = 1.25  # errors within this factor of the smallest (or both under FIDELITY_FLOOR) count as equal
FIDELITY_FLOOR = 1e-6


Prefer = Literal["balanced", "size", "speed"]


TIE_MARGIN = 0.03  # speed differences under 3% are ties even when the interval excludes 1: they do not matter
# to a user and would let the noise of a run decide


def choose_option(options: list[Option], ref_times: Sequence[float], ref_size: int, *, prefer: Prefer = "balanced",
           min_shrink: float = 1.8, max_slowdown: float = 0.05, per: int = 1,
           tie_margin: float = TIE_MARGIN) -> Option | None:
    """The option to write, or None for "keep the reference". Sets every option's `why`.

    Rule: only faithful options whose median ratio to the reference is at most 1 + `max_slowdown` and
    that are smaller than the reference count. `balanced` (default): among those at least `min_shrink`
    times smaller than the reference (if none is, among all that count) the fastest wins, where options
    whose speed is tied with the fastest (the interval of their time ratio to it reaches below
    1 + `tie_margin`) count as equally fast and the smallest of those wins. `speed`: the same without the size floor. `size`: the smallest
    wins; files within 5% of it count as equally small and the fastest of those wins.
    Deterministic: the same times and sizes always give the same pick.
    """
    vs_ref = {o.name: ratio(o.times, ref_times, per) for o in options}
    ok: list[Option] = []
    for o in options:
        r = vs_ref[o.name]
        if not o.faithful:
            o.why = "lost: outside the fidelity tolerance"
        elif r.median > 1 + max_slowdown:
            o.why = f"lost: slower than the original ({r.show()})"
        elif o.size >= ref_size:
            o.why = "lost: not smaller than the original"
        else:
            ok.append(o)
    if not ok:
        return None
    if prefer == "size":
        small = min(o.size for o in ok)
        pool = [o for o in ok if o.size <= 1.05 * small]
        best = _fastest(pool, vs_ref, per, tie_margin)
        _explain(ok, best, vs_ref, per, f"smallest (within 5% of {small:,} B), then fastest", tie_margin)
        return best
    pool = ok
    goal = ""
    if prefer == "balanced":
        big = [o for o in ok if ref_size / o.size >= min_shrink]
        if big:
            pool, goal = big, f" among {len(big)} at least {min_shrink:g}x smaller"
        for o in ok:
            if o not in pool:
                o.why = f"lost: only {ref_size / o.size:.2f}x smaller (< {min_shrink:g}x) while others reach it"
    best = _fastest(pool, vs_ref, per, tie_margin)
    _explain(pool, best, vs_ref, per, "fastest" + goal + " (speed ties go to the more faithful, then the smaller "
             "file)", tie_margin)
    return best


def _fastest(pool: list[Option], vs_ref: dict[str, Ratio], per: int, margin: float) -> Option:
    """The fastest of `pool` by median ratio; options tied with it (per-round CI) -> the smallest file."""
    top = min(pool, key=lambda o: (vs_ref[o.name].median, o.size, o.name))
    tied = [o for o in pool if o is top or ratio(o.times, top.times, per).speed_verdict(margin) != "slower"]
    same = {o.kernels for o in tied if o.kernels}  # the same kernels as a tied one: tied whatever the timer says
    tied += [o for o in pool if o not in tied and o.kernels in same]
    return min(faithful_first(tied), key=lambda o: (o.size, vs_ref[o.name].median, o.name))


def faithful_first(tied: list[Option]) -> list[Option]:
    """Of options tied on speed, those whose `error` is within `FIDELITY_TIE` of the smallest (all of them
    when no error is known): fidelity first, size decides among these."""
    errs = [o.error for o in tied if o.error is not None]
    if not errs:
        return tied
    bar = max(FIDELITY_TIE * min(errs), FIDELITY_FLOOR)
    return [o for o in tied if o.error is not None and o.error <= bar]


def _explain(pool: list[Option], best: Option, vs_ref: dict[str, Ratio], per: int, rule: str,
             margin: float) -> None:
    best.why = f"won: {rule}; {vs_ref[best.name].show()} vs the original"
    for o in pool:
        if o is best:
            continue
        r = ratio(o.times, best.times, per)
        v = r.speed_verdict(margin)
        if o.kernels and o.kernels == best.kernels:
            o.why = (f"lost: runs the same kernels as {best.name} (timed {r.median:.2f}x its time: session "
                     f"noise), file {o.size:,} vs {best.size:,} B")
        elif v == "slower":
            o.why = f"lost: slower than {best.name} (time ratio {r.median:.2f}, CI {r.lo:.2f}-{r.hi:.2f})"
        elif v == "faster" and o.size > best.size:
            o.why = f"lost: faster than {best.name} but larger ({o.size:,} vs {best.size:,} B) under this rule"
        elif o.error is not None and best.error is not None and o.error > max(FIDELITY_TIE * best.error,
                                                                              FIDELITY_FLOOR):
            o.why = (f"lost: speed tied with {best.name} (time ratio {r.median:.2f}, CI {r.lo:.2f}-{r.hi:.2f}), "
                     f"less faithful (error {o.error:.3g} vs {best.error:.3g})")
        else:
            o.why = (f"lost: speed tied with {best.name} (time ratio {r.median:.2f}, CI {r.lo:.2f}-{r.hi:.2f}), "
                     f"file {o.size:,} vs {best.size:,} B")


@dataclass
class InterleavedClock:
    """Times serialized ONNX models on one feed with the one timer (`measure.latency.interleaved_times`)
    and compares them by per-round ratios (`ratio`); `profile` gives ONNX Runtime's per-kernel times over
    the same interleaved loop. The clock the INT8 plan and format choices ask (`Measurer.clock` makes it
    with the run's threads)."""

    feed: dict
    seconds: float = 3.0
    threads: int = 1
    min_rounds: int = 15

    def times(self, models: dict[str, bytes]) -> dict[str, list[float]]:
        from edgeslim.measure.latency import interleaved_times
        from edgeslim.onnxkit.session import session

        sess = {k: session(v, threads=self.threads) for k, v in models.items()}
        fd = {k: {i.name: self.feed[i.name] for i in s.get_inputs()} for k, s in sess.items()}
        return interleaved_times(sess, fd, seconds=self.seconds, min_rounds=self.min_rounds)

    def ratio(self, cand: Sequence[float], ref: Sequence[float]) -> Ratio:
        return ratio(cand, ref)

    def profile(self, models: dict[str, bytes], runs: int = 15) -> dict[str, dict[str, float]]:
        """{model key: {ORT node name: median kernel time (us)}} (`measure.latency.onnx_kernel_profile`)."""
        from edgeslim.measure.latency import onnx_kernel_profile

        return onnx_kernel_profile(models, self.feed, runs=runs, threads=self.threads)
