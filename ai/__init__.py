"""OpenAI-compatible AI gateway on :8090 (AI-gateway issue)."""
