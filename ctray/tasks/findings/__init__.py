"""The 18 CT-RATE findings: schema, a rule-based EN/JA labeler and per-finding evaluation.

``schema`` fixes the finding order (CT-RATE's multi-abnormality label columns),
``rules`` labels report text with regex mentions plus sentence/clause-scoped
negation, and ``evaluation`` computes the per-finding table that CT-BERT-JPN
reports (accuracy, precision, recall, F1, AUC-ROC) with scikit-learn.
"""
