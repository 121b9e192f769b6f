"""Hardware-aware search over compression recipes (`edgeslim search`).

space.py: recipe generators (knobs) and footprint predictions; constraints.py: budgets, checked before
and after training; objectives.py: measured/estimated metrics per candidate; study.py: the Optuna
study, trials and workers' loop; workers.py: storages, slots, stale-trial recovery; final.py: full
fine-tune of the front and the report data; pareto.py: front and hypervolume; pgcluster.py: a private
PostgreSQL server for `make search-cluster`. See docs/search.md.
"""
