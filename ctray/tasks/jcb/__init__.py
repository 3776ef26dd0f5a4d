"""J-ClinicalBench (Shimizu et al., LREC 2026): a declarative task registry, generation
through any ctray LLM backend, and scoring that reproduces the published Table 4.

See docs/jclinicalbench.md for the scoring conventions and the evidence for each."""
