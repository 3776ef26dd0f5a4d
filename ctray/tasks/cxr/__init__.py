"""Chest X-ray report labeling: the 14 CheXpert observations x 4 classes.

Rule labeler (mention -> negation -> uncertainty), LLM labeler (guided JSON), the
paper's evaluation (weighted F1, paired tests, figures) and their jobs.
"""
