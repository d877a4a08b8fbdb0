"""hpo-worker: Optuna workers on a KeyDB group with one fenced writer.

Library API: :func:`hpo_worker.spec.load_spec`, :class:`hpo_worker.store.Store`,
:class:`hpo_worker.backend.FencedJournalBackend`, :class:`hpo_worker.runner.Worker`,
:func:`hpo_worker.report.run_report`.
"""

__version__ = "0.1.0"
