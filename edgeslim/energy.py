"""Energy windows for your own code: `with edgeslim.energy.window("name") as w: ...`, then `w.energy_j`,
`w.method` (`measured:rapl`, `measured:nvml`, ... or `unavailable`), `w.seconds`. The implementation is
`edgeslim.measure.window`; this module is its public name."""

from edgeslim.measure.window import Window, window

__all__ = ["Window", "window"]
