"""ReXGroundingCT: report grounding for chest CT (text pipeline and imaging models)."""
