"""Names every layer shares: internal bookkeeping columns and the light-task resources.

They live here, at the bottom of the stack, so ``ctray.io`` (readers, the writer) and
``ctray.pipeline`` (stages, the runner) use the same names without ``io`` importing
``pipeline``.
"""

# I/O and bookkeeping tasks (read, normalise, write) are light: a fraction of a CPU
# each keeps them schedulable beside stage actors on a 2-core machine.
LIGHT_TASK = {"num_cpus": 0.25}

ERROR_COL = "_error"
ERROR_STAGE_COL = "_error_stage"
ERROR_TYPE_COL = "_error_type"
# Names of the columns a row entered the job with (one short string per row); the
# errors table serializes those columns only for rows that fail.
INPUT_COLS_COL = "_input_columns"
ATTEMPT_COL = "_attempt"
INTERNAL_COLS = (ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL, INPUT_COLS_COL, ATTEMPT_COL)
