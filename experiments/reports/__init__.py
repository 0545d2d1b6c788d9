"""What the reports share (the tables, the ablation, the curves, the recovery table): numbers.py turns a grid's
records into summaries and verdicts, markdown.py prints them with what they were measured on."""
