"""``rtkrun report``: the paper's tables from run directories (docs/tables.md says what each is).

One module per table, each with its columns, quoted numbers, ``matches(run_dir, cfg)`` (does
this run directory feed the table?), its rows and ``write(run_dirs, out)``. ``TABLES`` lists
them in matching order: a run directory feeds the first table that matches it (a QM9 sample run
is T4, not T1). Rows come only from run directories: ``.hydra/config.yaml`` for what was run and
``metrics.json`` for what it measured; a job without ``metrics.json`` is listed as failed or
unfinished, never dropped. Writers and figures are :mod:`rtkrun.report.output`, shared reading
:mod:`rtkrun.report.rows`.
"""

from rtkrun.report import t1_t2, t3, t4, t5, t6, t7, t8

TABLES = (t7, t8, t4, t5, t6, t1_t2, t3)
