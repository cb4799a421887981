"""Whether Lightning writes step metrics this step (`trainer.log_every_n_steps`).

Why: a `LightningModule.log` call costs tens of microseconds, and Lightning keeps only the
value logged on the step it writes; callbacks that log on the other steps pay for values
that are thrown away. Lightning's own test (`should_update_logs`) is used where it exists,
so the values we log are the ones Lightning writes.
"""
from __future__ import annotations


def logs_this_step(trainer) -> bool:
    connector = getattr(trainer, "_logger_connector", None)
    decide = getattr(type(connector), "should_update_logs", None)
    if connector is None or decide is None:
        return True  # an unknown Lightning: log every step, as before
    return bool(connector.should_update_logs)
