"""Translation prompts: a CT-RATE-JPN-style Japanese default and a generic one.

The Japanese default follows the paper's method (a Japanese radiologist persona in
the system prompt, one report section per request, the answer introduced by a
final 「和訳:」 line) in our own wording. Any other language pair, and the
back-translation pass, use the generic English-language instruction. Users can
replace either text in the config; templates may use the fields
``{source_text} {section_label} {source_language} {target_language} {marker}``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ctray.llm.prompts import PromptTemplate

LANGUAGE_NAMES = {"en": "English", "ja": "Japanese", "de": "German", "fr": "French",
                  "es": "Spanish", "it": "Italian", "tr": "Turkish", "zh": "Chinese",
                  "ko": "Korean", "pt": "Portuguese"}
SECTION_LABELS = {
    "ja": {"findings": "所見", "impressions": "結論", "clinical_information": "臨床情報",
           "technique": "撮像方法"},
    "en": {"findings": "Findings", "impressions": "Impression",
           "clinical_information": "Clinical information", "technique": "Technique"},
}
DEFAULT_MARKERS = {"ja": "和訳:", "en": "Translation:"}

JA_SYSTEM = (
    "あなたは日本の放射線診断専門医です。これから渡す英語の胸部CT読影レポートの"
    "「{section_label}」の部分を日本語に翻訳してください。日本の読影レポートで普段使われる"
    "医学用語と文体を用い、内容を付け足したり省いたりしないでください。"
    "回答の最後に「{marker}」だけを書いた行を置き、その次の行から訳文のみを書いてください。"
)
GENERIC_SYSTEM = (
    "You are a board-certified radiologist who writes reports in both {source_language} "
    "and {target_language}. Translate the {section_label} section of the {source_language} "
    "chest CT report below into {target_language}. Use the terminology and style that "
    "{target_language}-speaking radiologists use in their reports, and add or leave out "
    "nothing. End your answer with a line containing only '{marker}' and put the translation, "
    "and nothing else, on the lines after it."
)
USER = "{source_text}"


class TranslationPromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_lang: str = Field("en", description="language of the reports")
    target_lang: str = Field("ja", description="language to translate into")
    marker: str | None = Field(None, description='None: 「和訳:」 for Japanese, "Translation:" '
                               "otherwise.")
    system: str | None = Field(None, description="None: the built-in text for the language pair.")
    user: str | None = Field(None, description="user message template (None: the built-in one)")
    name: str | None = Field(None, description="prompt name in manifests (None: derived from the "
                             "languages)")
    section_labels: dict[str, str] = Field(
        default_factory=dict, description="Section name -> how the prompt calls it; defaults from "
        "SECTION_LABELS.")

    def resolved_marker(self) -> str:
        return self.marker or DEFAULT_MARKERS.get(self.target_lang, "Translation:")

    def template(self) -> PromptTemplate:
        japanese = self.target_lang == "ja" and self.source_lang == "en"
        system = self.system or (JA_SYSTEM if japanese else GENERIC_SYSTEM)
        name = self.name or f"translate-{self.source_lang}-{self.target_lang}"
        # Fixed fields are filled in now so the prompt version changes with them.
        fixed = {
            "{marker}": self.resolved_marker(),
            "{source_language}": LANGUAGE_NAMES.get(self.source_lang, self.source_lang),
            "{target_language}": LANGUAGE_NAMES.get(self.target_lang, self.target_lang),
        }
        texts = [system, self.user or USER]
        for key, value in fixed.items():
            texts = [t.replace(key, value) for t in texts]
        return PromptTemplate(name=name, system=texts[0], user=texts[1])

    def section_label(self, section: str) -> str:
        labels = {**SECTION_LABELS["ja" if self.target_lang == "ja" else "en"],
                  **self.section_labels}
        return labels.get(section, section)


def back_translation_prompt(forward: TranslationPromptConfig) -> TranslationPromptConfig:
    """The reverse pair with the generic instruction (the forward text may be custom)."""
    return TranslationPromptConfig(source_lang=forward.target_lang, target_lang=forward.source_lang,
                                   name=f"back-translate-{forward.target_lang}-{forward.source_lang}")
