"""LLM provider adapters, one module per provider behind one interface (AI-gateway issue)."""
