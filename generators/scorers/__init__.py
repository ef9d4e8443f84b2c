"""Model-based scorers: reward models, multi-attribute heads, LLM judges, critiques; their configs and the judge-reply parsers."""
