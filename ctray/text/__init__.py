"""Text utilities without Ray: sentences, tokens, statistics, JSON in model answers.

- ``sentences``: ``split_sentences``, ``detect_lang``.
- ``tokenize``: ``words`` (MeCab/unidic-lite for Japanese).
- ``stats``: ``text_stats`` and the statistics tables.
- ``json_extract``: ``extract_json_object`` (the one JSON extraction for every LLM answer),
  ``schema_problems``, ``JSONAnswerError``.
"""

from ctray._api import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "sentences": ["split_sentences", "detect_lang"],
    "tokenize": ["words"],
    "stats": ["text_stats", "stats_table"],
    "json_extract": ["extract_json_object", "extract_json_array", "schema_problems",
                     "JSONAnswerError"],
})
