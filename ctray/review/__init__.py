"""The labeling and review page (docs/review.md): upload reports, label them with the
deployed labeling apps of every task, review and export gold labels. It sits above the task
packages (it knows each task's label set) and below the CLI.

``app``: the Serve app (page and API); ``uploads``: background labeling of an upload;
``store``: reviewers' labels (SQLite); ``inputs``: upload readers; ``label_sets``: each
task's labels, values and gold layout.
"""
