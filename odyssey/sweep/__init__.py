"""Studies on Ray Tune, recorded in MLflow.

* :mod:`odyssey.sweep.search_space` - YAML search spaces -> Ray Tune (pure, table-tested).
* :mod:`odyssey.sweep.study` - the typed study config (tasks x variants x space x budget).
* :mod:`odyssey.sweep.trainable` - the Ray Tune function trainable around ``train_trial``.
* :mod:`odyssey.sweep.runner` - one Tuner per (task, variant) search, parent MLflow runs, resume.
* :mod:`odyssey.sweep.callbacks` - driver-side Tune callbacks: progress view, MLflow status.
* :mod:`odyssey.sweep.jobs` - ``odyssey submit / jobs / logs / stop`` on Ray's job server.
* :mod:`odyssey.sweep.cli` - ``odyssey sweep``.
* :mod:`odyssey.sweep.interrupts`, :mod:`odyssey.sweep.outage`, :mod:`odyssey.sweep.identity` - stopping,
  MLflow outages, one study one sweep; :mod:`odyssey.sweep.connect` - the Ray connection;
  :mod:`odyssey.sweep.clean` - ``odyssey clean``.

Nothing here is imported by the trainer; Ray and MLflow are imported only where used.
"""
