"""Worked scenarios, one script each (`python -m examples.<name>` or `python examples/<name>.py`, `--tiny`
for a seconds-long smoke run); `make examples` runs them all. See docs/examples/."""
